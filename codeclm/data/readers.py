"""Readers for public speech corpora in their standard on-disk layouts -> AudioRecord lists.

* LJSpeech: ``root/metadata.csv`` with lines ``id|text|normalized text`` and ``root/wavs/id.wav``;
  one speaker ("LJ").
* LibriTTS (and LibriTTS-R): ``root/[subset/]speaker/chapter/utt.wav`` with ``utt.normalized.txt``
  (falling back to ``utt.original.txt``); the speaker is the folder name.
* VCTK 0.92: ``root/wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac``, or VCTK 0.80:
  ``root/wav48/pXXX/pXXX_NNN.wav``; transcripts in ``root/txt/pXXX/pXXX_NNN.txt``.

Each reader reads the audio headers with soundfile. A missing or unreadable audio file raises an
:class:`AudioError` naming it, or, with ``skip_errors=True``, is left out and counted in a warning.
These corpora are for users who bring their own data; codeclm trains only on the recordings named
in :mod:`codeclm.data.real`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from codeclm.data.manifest import AudioRecord
from codeclm.errors import AudioError, CodecLMError

__all__ = ["read_ljspeech", "read_libritts", "read_vctk"]

log = logging.getLogger(__name__)


def _collect(items: Iterable[tuple[Path, dict]], corpus: str, skip_errors: bool) -> list[AudioRecord]:
    """Turn (audio path, extra fields) pairs into records, raising or counting unreadable files."""
    records, bad = [], []
    for path, extra in items:
        try:
            records.append(AudioRecord.from_info(path, **extra))
        except AudioError as exc:
            if not skip_errors:
                raise AudioError(f"{corpus}: {exc} (pass skip_errors=True to skip such files)") from None
            bad.append(path.name)
    if bad:
        log.warning("%s: skipped %d unreadable audio file(s): %s%s", corpus, len(bad),
                    ", ".join(bad[:3]), ", ..." if len(bad) > 3 else "")
    return records


def _root(root: str | os.PathLike, corpus: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CodecLMError(f"{root}: {corpus} folder not found")
    return root


def _read_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def read_ljspeech(root: str | os.PathLike, skip_errors: bool = False) -> list[AudioRecord]:
    """LJSpeech-1.1: the normalized transcript (third column) when present, else the raw one."""
    root = _root(root, "LJSpeech")
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise CodecLMError(f"{meta}: LJSpeech metadata.csv not found")
    items = []
    with open(meta, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            cols = line.split("|")
            if len(cols) < 2 or not cols[0]:
                raise CodecLMError(f"{meta}:{lineno}: expected 'id|text|normalized text'")
            text = (cols[2] if len(cols) > 2 and cols[2].strip() else cols[1]).strip()
            items.append((root / "wavs" / f"{cols[0]}.wav",
                          dict(text=text or None, speaker="LJ", language="en-us")))
    return _collect(items, "LJSpeech", skip_errors)


def read_libritts(root: str | os.PathLike, skip_errors: bool = False) -> list[AudioRecord]:
    """LibriTTS: every ``*.wav`` below ``root`` laid out as ``speaker/chapter/utt.wav``."""
    root = _root(root, "LibriTTS")
    items = []
    for wav in sorted(root.rglob("*.wav")):
        stem = wav.name[:-len(".wav")]
        text = _read_text(wav.with_name(stem + ".normalized.txt"))
        if text is None:
            text = _read_text(wav.with_name(stem + ".original.txt"))
        items.append((wav, dict(text=text, speaker=wav.parent.parent.name, language="en-us")))
    if not items:
        raise CodecLMError(f"{root}: no .wav files found (expected speaker/chapter/utt.wav)")
    return _collect(items, "LibriTTS", skip_errors)


def read_vctk(root: str | os.PathLike, mic: int = 1, skip_errors: bool = False) -> list[AudioRecord]:
    """VCTK: the 0.92 layout (FLAC, microphone ``mic``) if present, else the 0.80 one (WAV)."""
    root = _root(root, "VCTK")
    if (root / "wav48_silence_trimmed").is_dir():
        wavs = sorted((root / "wav48_silence_trimmed").glob(f"p*/*_mic{mic}.flac"))
        wavs += sorted((root / "wav48_silence_trimmed").glob(f"s*/*_mic{mic}.flac"))
        utt_id = lambda p: p.name[: -len(f"_mic{mic}.flac")]  # noqa: E731
    elif (root / "wav48").is_dir():
        wavs = sorted((root / "wav48").glob("*/*.wav"))
        utt_id = lambda p: p.stem  # noqa: E731
    else:
        raise CodecLMError(f"{root}: not a VCTK folder (no wav48_silence_trimmed/ or wav48/)")
    if not wavs:
        raise CodecLMError(f"{root}: VCTK folder holds no audio files")
    items = []
    for wav in wavs:
        speaker = wav.parent.name
        text = _read_text(root / "txt" / speaker / f"{utt_id(wav)}.txt")
        items.append((wav, dict(text=text, speaker=speaker, language="en")))
    return _collect(items, "VCTK", skip_errors)
