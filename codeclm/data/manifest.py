"""Audio manifests: one JSON object per line describing an audio file.

A manifest line looks like::

    {"path": "wavs/a.wav", "duration": 2.5, "sample_rate": 22050, "channels": 1,
     "text": "hello world", "speaker": "p225", "caption": null, "language": "en-us"}

``path`` may be relative; it is resolved against the folder holding the manifest when read, and
written relative to that folder when the file lies below it. ``text``, ``speaker``, ``caption``
and ``language`` are optional.

:func:`scan_folder` builds records from a folder of audio files. Sidecar convention (documented,
one rule each):

* ``name.txt`` next to ``name.wav`` gives the transcript (``text``);
* ``name.caption.txt`` next to ``name.wav`` gives the ``caption``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from codeclm.audio import audio_info
from codeclm.errors import AudioError, CodecLMError
from codeclm.fileio import atomic_output, json_object, os_error

__all__ = ["AudioRecord", "ScanResult", "iter_manifest", "missing_files", "read_manifest", "write_manifest", "scan_folder",
           "AUDIO_EXTENSIONS"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
_REQUIRED = ("path", "duration", "sample_rate", "channels")
_OPTIONAL = ("text", "speaker", "caption", "language")


@dataclass
class AudioRecord:
    """One audio file and what is known about it. ``path`` is absolute once read from disk."""

    path: str
    duration: float
    sample_rate: int
    channels: int
    text: str | None = None
    speaker: str | None = None
    caption: str | None = None
    language: str | None = None

    def to_dict(self, relative_to: str | os.PathLike | None = None) -> dict:
        """A JSON-ready dict; ``path`` made relative to ``relative_to`` when it lies below it."""
        d = {k: v for k, v in asdict(self).items() if v is not None or k in _REQUIRED}
        if relative_to is not None:
            p, base = Path(self.path), Path(relative_to).resolve()
            try:
                d["path"] = p.resolve().relative_to(base).as_posix()
            except ValueError:
                d["path"] = str(p)
        return d

    @classmethod
    def from_info(cls, path: str | os.PathLike, **extra) -> "AudioRecord":
        """Build a record by reading the file's header with soundfile (raises AudioError)."""
        info = audio_info(path)
        if info.samplerate <= 0 or info.frames <= 0:
            raise AudioError(f"{path}: audio file holds no samples")
        return cls(path=str(path), duration=info.frames / info.samplerate,
                   sample_rate=int(info.samplerate), channels=int(info.channels), **extra)


@dataclass
class ScanResult:
    """What :func:`scan_folder` found: the readable records and the files it skipped."""

    records: list[AudioRecord] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)

    def __iter__(self) -> Iterator[AudioRecord]:  # list-like: iterate, len() and index the records
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> AudioRecord:
        return self.records[i]

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    def summary(self, first: int = 3) -> str:
        """One line: how many files were read, how many skipped and the first few skipped names."""
        line = f"{len(self.records)} audio files"
        if self.errors:
            names = ", ".join(Path(p).name for p, _ in self.errors[:first])
            more = "" if len(self.errors) <= first else ", ..."
            line += f", {len(self.errors)} unreadable ({names}{more})"
        return line


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[AudioRecord]:
    """Read a JSON-lines manifest; relative paths are resolved against the manifest's folder.

    Blank lines are ignored. Malformed JSON, a non-object line, a missing required field or a
    field of the wrong type raises :class:`CodecLMError` naming the file and line number.
    With ``check_files`` the entries whose audio file is missing are counted and reported in one
    warning line on stderr (they are kept: the dataset replaces them, and counts them, when read).
    """
    records = list(iter_manifest(path))
    if check_files:
        missing = missing_files(records)
        if missing:
            names = ", ".join(Path(r.path).name for r in missing[:3]) + (", ..." if len(missing) > 3 else "")
            print(f"codeclm: warning: {path}: {len(missing)} of {len(records)} entries name missing files ({names})",
                  file=sys.stderr, flush=True)
    return records


def iter_manifest(path: str | os.PathLike) -> Iterator[AudioRecord]:
    """The records of a manifest one at a time (memory does not grow with the file)."""
    path = Path(path)
    if not path.is_file():
        raise CodecLMError(f"{path}: manifest not found")
    base = path.resolve().parent
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield _parse_line(line, base, f"{path}:{lineno}")
    except UnicodeDecodeError as exc:
        raise CodecLMError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise CodecLMError(f"{path}: cannot read ({exc.strerror})") from None


def missing_files(records: Iterable[AudioRecord]) -> list[AudioRecord]:
    """The records whose audio file does not exist (or is not a file)."""
    return [r for r in records if not os.path.isfile(r.path)]


def _parse_line(line: str, base: Path, where: str) -> AudioRecord:
    obj = json_object(line, where, _REQUIRED)
    try:
        p = Path(str(obj["path"]))
        rec = AudioRecord(path=str(p if p.is_absolute() else base / p),
                          duration=float(obj["duration"]), sample_rate=int(obj["sample_rate"]),
                          channels=int(obj["channels"]),
                          **{k: (None if obj.get(k) is None else str(obj[k])) for k in _OPTIONAL})
    except (TypeError, ValueError) as exc:
        raise CodecLMError(f"{where}: bad field value ({exc})") from None
    if rec.duration < 0 or rec.sample_rate <= 0 or rec.channels <= 0:
        raise CodecLMError(f"{where}: duration, sample_rate and channels must be positive")
    return rec


def write_manifest(records: Iterable[AudioRecord], path: str | os.PathLike) -> Path:
    """Write records as JSON lines atomically (temp file in the same folder, then os.replace).

    Paths below the manifest's folder are written relative to it, others absolute.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CodecLMError(f"{path}: folder {folder} does not exist")
    try:
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec.to_dict(relative_to=folder), ensure_ascii=False) + "\n")
    except BrokenPipeError:
        raise
    except OSError as exc:  # disk full, file too large
        raise os_error(path, exc) from None
    return path


def _read_sidecar(path: Path) -> str | None:
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        return text or None
    return None


def scan_folder(
    directory: str | os.PathLike,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    sidecar: bool = True,
    skip_errors: bool = False,
) -> ScanResult:
    """Find audio files below ``directory`` (recursively, sorted, hidden ones skipped) and read
    their headers.

    With ``sidecar``, ``name.txt`` becomes ``text`` and ``name.caption.txt`` becomes ``caption``.
    Unreadable files are collected in ``result.errors``; unless ``skip_errors`` the first one
    makes the scan raise an :class:`AudioError` that gives the count and the first few names.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CodecLMError(f"{directory}: not a folder")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    result = ScanResult()
    for p in files:
        extra = {}
        if sidecar:
            extra["text"] = _read_sidecar(p.with_suffix(".txt"))
            extra["caption"] = _read_sidecar(p.with_suffix(".caption.txt"))
        try:
            result.records.append(AudioRecord.from_info(p, **extra))
        except AudioError as exc:
            result.errors.append((str(p), str(exc)))
    if result.errors and not skip_errors:
        raise AudioError(f"{directory}: {result.summary()}; first error: {result.errors[0][1]} "
                         f"(pass skip_errors=True / --skip-errors to skip them)")
    return result
