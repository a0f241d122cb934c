"""The ``.cclm`` container: a checksummed header, then checksummed chunks of entropy-coded codes.

Layout (all integers little-endian; the full description is in ``docs/format.md``)::

    header  magic "CCLM" | version u16 | flags u16 | header_size u32 | fields ... | name | crc32
    chunk   frames u32 | payload_size u32 | crc32 u32 | payload (payload_size bytes)
    chunk   ...                                         (until the header's frame count is reached)

This module only reads and writes bytes: it knows nothing of codecs or entropy models. Every
length is validated against hard limits and against the bytes actually left in the file before
anything is allocated, so a corrupt or hostile file gives a :class:`BitstreamError` naming the
file and the problem, never a crash or a huge allocation.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import BinaryIO

from codeclm.errors import BitstreamError

__all__ = ["MAGIC", "MAX_CHUNK_PAYLOAD", "VERSION", "Chunk",
           "Header", "read_chunks", "read_header", "write_chunk", "write_header"]

MAGIC = b"CCLM"
VERSION = 1
_PREFIX = struct.Struct("<4sHHI")  # magic, version, flags, header_size
# sample_rate, channels, num_codebooks, bins, hop_length, num_samples, bandwidth (kbps, 0 = all),
# chunk_frames, entropy_model, source_sample_rate, source_channels, model sha256 (32 raw bytes),
# model name length
_FIELDS = struct.Struct("<IHHIIQdIBIH32sH")
_CRC = struct.Struct("<I")
_CHUNK = struct.Struct("<III")  # frames, payload_size, crc32 (of frames, payload_size and payload)
MIN_HEADER = _PREFIX.size + _FIELDS.size + _CRC.size
MAX_NAME = 256
MAX_CHUNK_PAYLOAD = 64 << 20  # bytes; far above any real chunk (kept well below memory limits)
LIMITS = {"sample_rate": (1, 1_000_000), "channels": (1, 64), "num_codebooks": (1, 1024),
          "bins": (2, 1 << 16), "hop_length": (1, 1 << 20), "num_samples": (1, 1 << 48),
          "chunk_frames": (1, 1 << 14), "source_sample_rate": (0, 1_000_000), "source_channels": (0, 1024)}


@dataclass(frozen=True)
class Header:
    """What a ``.cclm`` file says about itself (everything but the chunks)."""

    sample_rate: int
    channels: int
    num_codebooks: int
    bins: int
    hop_length: int
    num_samples: int
    bandwidth: float | None
    chunk_frames: int
    entropy_model: int
    model_name: str
    model_sha256: str
    source_sample_rate: int = 0  # of the input file before resampling (0: unknown)
    source_channels: int = 0

    @property
    def num_frames(self) -> int:
        return -(-self.num_samples // self.hop_length)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def raw_bits_per_frame(self) -> float:
        return self.num_codebooks * math.log2(self.bins)

    def to_dict(self) -> dict:
        return {**asdict(self), "num_frames": self.num_frames, "duration_s": self.duration}

    def to_bytes(self) -> bytes:
        name = self.model_name.encode("utf-8")
        if len(name) > MAX_NAME:
            raise BitstreamError(f"model name longer than {MAX_NAME} bytes")
        try:
            sha = bytes.fromhex(self.model_sha256)
        except ValueError:
            sha = b""
        if len(sha) != 32:
            raise BitstreamError(f"model sha256 must be 64 hex digits, got {self.model_sha256!r}")
        _check_fields(self, "header")
        fields = _FIELDS.pack(self.sample_rate, self.channels, self.num_codebooks, self.bins, self.hop_length,
                              self.num_samples, self.bandwidth or 0.0, self.chunk_frames, self.entropy_model,
                              self.source_sample_rate, self.source_channels, sha, len(name))
        size = MIN_HEADER + len(name)
        body = _PREFIX.pack(MAGIC, VERSION, 0, size) + fields + name
        return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class Chunk:
    """One chunk as stored: ``frames`` code frames entropy-coded into ``payload``."""

    index: int
    frames: int
    payload: bytes


def write_header(f: BinaryIO, header: Header) -> int:
    """Write ``header`` at the current position; returns its size in bytes."""
    data = header.to_bytes()
    f.write(data)
    return len(data)


def write_chunk(f: BinaryIO, frames: int, payload: bytes) -> int:
    """Append one chunk record; returns its size in bytes."""
    if not 1 <= frames <= LIMITS["chunk_frames"][1] or not 0 < len(payload) <= MAX_CHUNK_PAYLOAD:
        raise BitstreamError(f"cannot write a chunk of {frames} frames and {len(payload)} bytes")
    head = struct.pack("<II", frames, len(payload))
    f.write(head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload)
    return _CHUNK.size + len(payload)


def read_header(f: BinaryIO, name: str = "input") -> Header:
    """Read and validate the header at the start of ``f`` (a seekable binary file).

    Raises :class:`BitstreamError` (``"NAME: ..."``) for an empty or truncated file, wrong magic,
    an unknown version, a header size that does not fit the file, a bad CRC or absurd fields.
    """
    size = _size_of(f)
    if size == 0:
        raise BitstreamError(f"{name}: file is empty, not a compressed .cclm file")
    prefix = f.read(_PREFIX.size)
    if len(prefix) < 4 or prefix[:4] != MAGIC:
        raise BitstreamError(f"{name}: not a .cclm file (starts with {prefix[:4]!r}, expected {MAGIC!r})")
    if len(prefix) < _PREFIX.size:
        raise BitstreamError(f"{name}: truncated header ({size} bytes)")
    _, version, flags, header_size = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise BitstreamError(f"{name}: format version {version} is not supported (this codeclm reads version "
                             f"{VERSION}; a newer codeclm may read it)")
    if flags != 0:
        raise BitstreamError(f"{name}: unknown header flags 0x{flags:04x}")
    if not MIN_HEADER <= header_size <= MIN_HEADER + MAX_NAME:
        raise BitstreamError(f"{name}: header size field says {header_size} bytes (valid: "
                             f"{MIN_HEADER}..{MIN_HEADER + MAX_NAME}); the file is corrupt")
    if header_size > size:
        raise BitstreamError(f"{name}: truncated: the header needs {header_size} bytes, the file has {size}")
    rest = f.read(header_size - _PREFIX.size)
    if len(rest) != header_size - _PREFIX.size:
        raise BitstreamError(f"{name}: truncated header")
    body, (crc,) = prefix + rest[:-_CRC.size], _CRC.unpack(rest[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise BitstreamError(f"{name}: header checksum mismatch (CRC32 0x{zlib.crc32(body):08x}, stored "
                             f"0x{crc:08x}): the file is corrupt")
    (sr, ch, n_q, bins, hop, n, bw, chunk, model, src_sr, src_ch, sha, name_len) = _FIELDS.unpack_from(body,
                                                                                                   _PREFIX.size)
    if MIN_HEADER + name_len != header_size:
        raise BitstreamError(f"{name}: model name length {name_len} does not match the header size")
    try:
        model_name = body[_PREFIX.size + _FIELDS.size:].decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError(f"{name}: model name is not valid UTF-8") from None
    if not (math.isfinite(bw) and bw >= 0):
        raise BitstreamError(f"{name}: invalid bandwidth {bw!r} in header")
    header = Header(sr, ch, n_q, bins, hop, n, bw or None, chunk, model, model_name, sha.hex(), src_sr, src_ch)
    _check_fields(header, name)
    return header


def read_chunks(f: BinaryIO, header: Header, name: str = "input") -> Iterator[Chunk]:
    """Yield the chunks after the header, verifying sizes, CRCs and the total frame count.

    Stops after the chunk that completes ``header.num_frames`` and then requires the end of file,
    so truncation (even at a chunk boundary) and trailing bytes are both errors.
    """
    size = _size_of(f)
    done, index = 0, 0
    while done < header.num_frames:
        pos = f.tell()
        head = f.read(_CHUNK.size)
        if len(head) < _CHUNK.size:
            raise BitstreamError(f"{name}: truncated: the file ends after {done} of {header.num_frames} frames "
                                 f"(chunk {index} is missing or cut)")
        frames, payload_size, crc = _CHUNK.unpack(head)
        if not 1 <= frames <= header.chunk_frames or done + frames > header.num_frames:
            raise BitstreamError(f"{name}: chunk {index} at byte {pos} claims {frames} frames (allowed 1.."
                                 f"{min(header.chunk_frames, header.num_frames - done)}); the file is corrupt")
        limit = min(MAX_CHUNK_PAYLOAD, _payload_bound(frames, header.num_codebooks))
        if not 4 <= payload_size <= limit or payload_size % 4:
            raise BitstreamError(f"{name}: chunk {index} at byte {pos} claims a payload of {payload_size} bytes "
                                 f"(must be a multiple of 4 in 4..{limit}); the file is corrupt")
        if pos + _CHUNK.size + payload_size > size:
            raise BitstreamError(f"{name}: truncated: chunk {index} needs {payload_size} payload bytes, only "
                                 f"{size - pos - _CHUNK.size} are left")
        payload = f.read(payload_size)
        if len(payload) != payload_size:
            raise BitstreamError(f"{name}: truncated inside chunk {index}")
        if zlib.crc32(payload, zlib.crc32(head[:8])) != crc:
            raise BitstreamError(f"{name}: chunk {index} at byte {pos} fails its CRC32 check: the file is corrupt")
        yield Chunk(index, frames, payload)
        done += frames
        index += 1
    extra = size - f.tell()
    if extra:
        raise BitstreamError(f"{name}: {extra} unexpected bytes after the last chunk; the file is corrupt")


def _payload_bound(frames: int, n_q: int) -> int:
    """Most bytes a valid chunk can take: 24 bits per symbol at worst (constriction's precision)."""
    return 4 * (((frames + 1) * n_q * 24) // 32 + 4)


def _check_fields(h: Header, name: str) -> None:
    for field, (lo, hi) in LIMITS.items():
        value = getattr(h, field)
        if not lo <= value <= hi:
            raise BitstreamError(f"{name}: header field {field} = {value} is out of range ({lo}..{hi}); "
                                 "the file is corrupt")
    if h.bins & (h.bins - 1):
        raise BitstreamError(f"{name}: header field bins = {h.bins} is not a power of two")


def _size_of(f: BinaryIO) -> int:
    """Total size of a seekable file object (its position is kept)."""
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # BytesIO and friends
        pos = f.seek(0, os.SEEK_CUR)
        end = f.seek(0, os.SEEK_END)
        f.seek(pos)
        return end
