"""Token cache: a corpus encoded once by the codec, for training token language models.

>>> result = tokenize_corpus("data/train.jsonl", codec, "cache/train", bandwidth=6.0)
>>> cache = TokenCache("cache/train")
>>> item = cache[0]          # {"codes": LongTensor [n_q, frames], "text": ..., "path": ..., ...}

Layout of ``out_dir``:

* ``meta.json``: format version, the codec's identity (name + sha256 of its weights), ``n_q``,
  ``bandwidth``, ``frame_rate``, ``bins``, ``sample_rate``, ``channels``, ``hop_length`` and the
  storage ``dtype``.
* ``shard_00000.safetensors``, ...: one tensor ``codes`` ``[n_q, total_frames]`` per shard, the
  codes of several records concatenated along time (int16 when ``bins <= 32768``, else int32).
  A shard is closed once it holds ``shard_frames`` frames; a longer record gets a shard alone.
* With ``chroma=True`` each shard also holds ``chroma`` ``[1, total_frames]`` (uint8): the dominant
  pitch class of each frame (:func:`codeclm.lm.melody.chroma_indices`, 12 = silent), for melody
  conditioning; ``meta.json`` then says ``"chroma": true``.
* ``index.jsonl``: one line per record: ``path``, ``duration``, ``text``, ``caption``,
  ``speaker``, ``language``, ``shard``, ``offset`` and ``n_frames`` (frames, along time).

Every record is encoded whole, at the codec's sample rate and channel count.

Crash safety and resuming: a shard is written to a temporary file and renamed, *then* its index
lines are appended in one write and fsync'ed. The index is the commit record: a shard that the
index does not mention is rewritten, and a torn last index line is dropped, so a killed run
loses at most the shard it was filling. Rerunning skips every record (by path) already in the
index, and refuses a cache made by another codec or at another bandwidth.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from codeclm.audio import load_audio
from codeclm.data.manifest import AudioRecord, read_manifest
from codeclm.errors import AudioError, CodecLMError, ConfigError
from codeclm.fileio import atomic_output

__all__ = ["tokenize_corpus", "TokenCache", "TokenizeResult", "FORMAT", "DEFAULT_SHARD_FRAMES"]

FORMAT = "codeclm-token-cache"
VERSION = 1
DEFAULT_SHARD_FRAMES = 1 << 20  # ~3.9 h at 75 Hz; 16 MB for 8 int16 codebooks
META, INDEX = "meta.json", "index.jsonl"
_FIELDS = ("text", "caption", "speaker", "language")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


@dataclass
class TokenizeResult:
    """What one :func:`tokenize_corpus` run did."""

    out_dir: Path
    encoded: int = 0  # records encoded in this run
    cached: int = 0  # records found in the cache already (skipped)
    frames: int = 0  # frames encoded in this run
    shards: int = 0  # shards written in this run
    errors: list[tuple[str, str]] = field(default_factory=list)  # unreadable files: (path, message)

    def summary(self, first: int = 3) -> str:
        line = (f"{self.out_dir}: {self.encoded} records encoded ({self.frames} frames, {self.shards} shards), "
                f"{self.cached} already cached")
        if self.errors:
            names = ", ".join(Path(p).name for p, _ in self.errors[:first])
            line += f", {len(self.errors)} unreadable skipped ({names}{', ...' if len(self.errors) > first else ''})"
        return line


def _codec_meta(codec, bandwidth: float | None, chroma: bool = False) -> dict:
    n_q = codec.num_codebooks_for(bandwidth)
    return {"chroma": bool(chroma), "format": FORMAT, "version": VERSION, "codec": codec.identity(), "n_q": n_q, "bandwidth": bandwidth,
            "frame_rate": codec.frame_rate, "bins": codec.cardinality, "sample_rate": codec.sample_rate,
            "channels": codec.channels, "hop_length": codec.hop_length,
            "dtype": "int16" if codec.cardinality <= 32768 else "int32"}


def _write_json(path: Path, obj: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _read_meta(out_dir: Path) -> dict:
    path = out_dir / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CodecLMError(f"{out_dir}: not a token cache (no {META})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecLMError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CodecLMError(f"{path}: not a {FORMAT} meta file")
    if meta.get("version") != VERSION:
        raise CodecLMError(f"{path}: token cache version {meta.get('version')}, this codeclm reads {VERSION}")
    return meta


def _read_index(out_dir: Path, repair: bool = False) -> list[dict]:
    """Complete index lines; a torn last line (no newline: a killed append) is ignored or, with
    ``repair``, cut off the file."""
    path = out_dir / INDEX
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    entries = []
    for lineno, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CodecLMError(f"{path}:{lineno}: malformed index line ({exc.msg})") from None
    return entries


def _open_cache(out_dir: Path, meta: dict, resume: bool) -> list[dict]:
    """Create ``out_dir`` or check the cache in it; returns the committed index entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # start over: drop what an earlier run left
        for p in [out_dir / META, out_dir / INDEX, *out_dir.glob("shard_*.safetensors")]:
            p.unlink(missing_ok=True)
    if not (out_dir / META).exists():
        if (out_dir / INDEX).exists():
            raise CodecLMError(f"{out_dir}: has an {INDEX} but no {META}; pass resume=False (--overwrite) "
                               "to start over")
        _write_json(out_dir / META, meta)
        return []
    old = _read_meta(out_dir)
    old.setdefault("chroma", False)
    for key, what in (("codec", "codec"), ("n_q", "number of codebooks"), ("bins", "codebook size"),
                      ("chroma", "chroma setting")):
        if old.get(key) != meta[key]:
            raise CodecLMError(f"{out_dir}: cache made with a different {what} ({old.get(key)} vs {meta[key]}); "
                               "use another folder or pass resume=False (--overwrite) to start over")
    return _read_index(out_dir, repair=True)


def tokenize_corpus(
    manifest: str | os.PathLike | Iterable[AudioRecord],
    codec,
    out_dir: str | os.PathLike,
    bandwidth: float | None = None,
    shard_frames: int = DEFAULT_SHARD_FRAMES,
    resume: bool = True,
    progress: bool = True,
    fail_on_error: bool = False,
    on_commit: Callable[[int], None] | None = None,
    chroma: bool = False,
) -> TokenizeResult:
    """Encode every record of ``manifest`` (a path or records) once into a cache in ``out_dir``.

    ``bandwidth`` (kbps, None: all codebooks) fixes ``n_q``. ``resume=False`` deletes an existing
    cache in ``out_dir`` first. Unreadable audio files are skipped and listed in the result
    (``fail_on_error``: raise :class:`AudioError` instead). ``chroma`` also stores each frame's
    dominant pitch class (melody conditioning). ``on_commit(shard)`` is called after
    each shard and its index lines are committed (progress hooks, tests).
    """
    if shard_frames <= 0:
        raise CodecLMError(f"shard_frames must be positive, got {shard_frames}")
    if getattr(codec.config, "normalize", False):
        raise ConfigError("this codec normalises loudness per chunk (codes need per-chunk scales); "
                          "the token cache stores codes only")
    records = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    out_dir = Path(out_dir)
    meta = _codec_meta(codec, bandwidth, chroma)
    entries = _open_cache(out_dir, meta, resume)
    done = {e["path"] for e in entries}
    result = TokenizeResult(out_dir)
    dtype = torch.int16 if meta["dtype"] == "int16" else torch.int32
    shard = max((e["shard"] for e in entries), default=-1) + 1
    pending: list[torch.Tensor] = []
    pending_chroma: list[torch.Tensor] = []
    lines: list[str] = []
    filled = 0

    def commit() -> None:
        nonlocal shard, pending, pending_chroma, lines, filled
        tensors = {"codes": torch.cat(pending, dim=1).contiguous()}
        if chroma:
            tensors["chroma"] = torch.cat(pending_chroma, dim=1).contiguous()
        with atomic_output(out_dir / shard_name(shard)) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        with open(out_dir / INDEX, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        result.shards += 1
        if on_commit is not None:
            on_commit(shard)
        shard, pending, pending_chroma, lines, filled = shard + 1, [], [], [], 0

    for rec in tqdm(records, desc="tokenize", unit="file", disable=not progress, dynamic_ncols=True):
        if rec.path in done:
            result.cached += 1
            continue
        try:
            wav, _ = load_audio(rec.path, codec.sample_rate, codec.channels)
        except AudioError as exc:
            if fail_on_error:
                raise
            result.errors.append((rec.path, str(exc)))
            continue
        with torch.inference_mode():
            codes = codec.encode(wav[None], bandwidth=bandwidth)[0].to(dtype)
        done.add(rec.path)
        entry = {"path": rec.path, "duration": wav.shape[-1] / codec.sample_rate,
                 **{k: getattr(rec, k) for k in _FIELDS}, "shard": shard, "offset": filled,
                 "n_frames": codes.shape[-1]}
        pending.append(codes)
        if chroma:
            from codeclm.chroma import chroma_indices

            pending_chroma.append(chroma_indices(wav[None], codec.sample_rate, codec.hop_length,
                                                 n_frames=codes.shape[-1]).to(torch.uint8))
        lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        filled += codes.shape[-1]
        result.encoded += 1
        result.frames += codes.shape[-1]
        if filled >= shard_frames:
            commit()
    if pending:
        commit()
    return result


class TokenCache:
    """Read a token cache: ``len(cache)``, ``cache[i]`` -> ``{"codes": LongTensor [n_q, F], ...}``.

    Shards are memory-mapped and only the requested slice is read; the object pickles (for
    DataLoader workers) without its open files.
    """

    def __init__(self, out_dir: str | os.PathLike, max_open: int = 8):
        self.out_dir = Path(out_dir)
        self.meta = _read_meta(self.out_dir)
        self.entries = _read_index(self.out_dir)
        self.max_open = max_open
        self._open: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"token cache index {i} out of range ({len(self)} records)")
        entry = self.entries[i]
        start = entry["offset"]
        codes = self._shard(entry["shard"]).get_slice("codes")[:, start: start + entry["n_frames"]]
        item = {k: v for k, v in entry.items() if k not in ("shard", "offset")}
        item["codes"] = codes.long()
        if self.meta.get("chroma"):
            item["chroma"] = self._shard(entry["shard"]).get_slice("chroma")[:, start: start + entry["n_frames"]][0].long()
        return item

    def _shard(self, i: int):
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        path = self.out_dir / shard_name(i)
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as exc:  # missing or corrupt shard
            raise CodecLMError(f"{path}: unreadable token shard ({exc})") from None
        self._open[i] = handle
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}

    def __repr__(self) -> str:
        return (f"TokenCache({str(self.out_dir)!r}: {len(self)} records, n_q={self.meta['n_q']}, "
                f"codec {self.meta['codec']['name']})")
