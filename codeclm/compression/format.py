"""The ``.cclm`` container: a checksummed header, then checksummed chunks of entropy-coded codes.

Layout of version 2 (all integers little-endian; the full description is in ``docs/format.md``)::

    header  magic "CCLM" | version u16 | flags u16 | header_size u32 | fields ... | file_id | name | crc32
    chunk   frames u32 | payload_size u32 | crc32 u32 | payload (payload_size bytes)
    chunk   ...                                         (until the header's frame count is reached)
    trailer "CCLT" | chunks u32 | frames u64 | num_samples u64 | file_id | crc32 (of every chunk + trailer)

A version-2 chunk's CRC also covers the file id, the chunk's index and its first frame's offset
(none of them stored in the chunk), so a chunk moved, dropped, duplicated or spliced in from
another file fails its check; the trailer's CRC covers every chunk byte, and its counts must
match. Version 1 (no file id, CRCs of the chunk alone, no trailer) is still read.

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

__all__ = ["MAGIC", "MAX_CHUNK_PAYLOAD", "VERSION", "VERSIONS", "Chunk", "ChunkWriter",
           "Header", "read_chunks", "read_header", "recompute_crcs", "write_chunk", "write_header"]

MAGIC = b"CCLM"
TRAILER_MAGIC = b"CCLT"
VERSION = 2  # written
VERSIONS = (1, 2)  # read
_PREFIX = struct.Struct("<4sHHI")  # magic, version, flags, header_size
# sample_rate, channels, num_codebooks, bins, hop_length, num_samples, bandwidth (kbps, 0 = all),
# chunk_frames, entropy_model, source_sample_rate, source_channels, model sha256 (32 raw bytes),
# model name length
_FIELDS = struct.Struct("<IHHIIQdIBIH32sH")
_FILE_ID = 16  # bytes of random file id (version 2, after the fields)
_CRC = struct.Struct("<I")
_CHUNK = struct.Struct("<III")  # frames, payload_size, crc32
_BINDING = struct.Struct("<16sIQ")  # file id, chunk index, frame offset: in a v2 chunk's CRC, not stored
_TRAILER = struct.Struct("<4sIQQ16sI")  # magic, chunks, frames, num_samples, file id, crc32
MIN_HEADER_V1 = _PREFIX.size + _FIELDS.size + _CRC.size
MIN_HEADER = MIN_HEADER_V1 + _FILE_ID  # version 2
MAX_NAME = 256
MAX_CHUNK_PAYLOAD = 64 << 20  # bytes; far above any real chunk (kept well below memory limits)
LIMITS = {"sample_rate": (1, 1_000_000), "channels": (1, 64), "num_codebooks": (1, 1024),
          "bins": (2, 1 << 16), "hop_length": (1, 1 << 20), "num_samples": (1, 1 << 48),
          "chunk_frames": (1, 1 << 14), "source_sample_rate": (0, 1_000_000), "source_channels": (0, 1024)}


def _min_header(version: int) -> int:
    return MIN_HEADER_V1 if version == 1 else MIN_HEADER


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
    file_id: str = ""  # 32 hex digits (version 2): binds every chunk to this file
    version: int = VERSION

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

    def file_id_bytes(self) -> bytes:
        try:
            raw = bytes.fromhex(self.file_id)
        except ValueError:
            raw = b""
        if len(raw) != _FILE_ID:
            raise BitstreamError(f"file id must be {2 * _FILE_ID} hex digits, got {self.file_id!r}")
        return raw

    def to_bytes(self) -> bytes:
        if self.version not in VERSIONS:
            raise BitstreamError(f"cannot write format version {self.version}")
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
        file_id = b"" if self.version == 1 else self.file_id_bytes()
        size = _min_header(self.version) + len(name)
        body = _PREFIX.pack(MAGIC, self.version, 0, size) + fields + file_id + name
        return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class Chunk:
    """One chunk as stored: ``frames`` code frames entropy-coded into ``payload``; ``offset`` is
    the index of its first frame in the file."""

    index: int
    frames: int
    payload: bytes
    offset: int = 0


def write_header(f: BinaryIO, header: Header) -> int:
    """Write ``header`` at the current position; returns its size in bytes."""
    data = header.to_bytes()
    f.write(data)
    return len(data)


def _check_chunk(frames: int, payload: bytes) -> None:
    if not 1 <= frames <= LIMITS["chunk_frames"][1] or not 0 < len(payload) <= MAX_CHUNK_PAYLOAD:
        raise BitstreamError(f"cannot write a chunk of {frames} frames and {len(payload)} bytes")


def _chunk_crc(head: bytes, payload: bytes, binding: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(head, zlib.crc32(binding)))


def write_chunk(f: BinaryIO, frames: int, payload: bytes, binding: bytes = b"") -> int:
    """Append one chunk record (version 1 when ``binding`` is empty); returns its size in bytes.

    Version-2 files are written with :class:`ChunkWriter`, which supplies the binding."""
    _check_chunk(frames, payload)
    head = struct.pack("<II", frames, len(payload))
    f.write(head + _CRC.pack(_chunk_crc(head, payload, binding)) + payload)
    return _CHUNK.size + len(payload)


class ChunkWriter:
    """Writes the chunks of one file after its header, and (version 2) the trailer.

    >>> w = ChunkWriter(f, header)        # header.version 2 with a file id
    >>> w.write(frames, payload) ...      # in order
    >>> w.finish(num_samples)             # the trailer: chunk count, frames, samples, CRC of all chunks
    """

    def __init__(self, f: BinaryIO, header: Header):
        self.f, self.version = f, header.version
        self.file_id = header.file_id_bytes() if header.version >= 2 else b""
        self.index = self.offset = 0
        self.crc = 0  # running CRC32 of every chunk byte (version 2 trailer)

    def write(self, frames: int, payload: bytes) -> int:
        _check_chunk(frames, payload)
        binding = _BINDING.pack(self.file_id, self.index, self.offset) if self.version >= 2 else b""
        head = struct.pack("<II", frames, len(payload))
        record = head + _CRC.pack(_chunk_crc(head, payload, binding)) + payload
        self.f.write(record)
        self.crc = zlib.crc32(record, self.crc)
        self.index += 1
        self.offset += frames
        return len(record)

    def finish(self, num_samples: int) -> int:
        """Write the version-2 trailer (nothing for version 1); returns its size in bytes."""
        if self.version < 2:
            return 0
        body = _TRAILER.pack(TRAILER_MAGIC, self.index, self.offset, num_samples, self.file_id, 0)[:-_CRC.size]
        self.f.write(body + _CRC.pack(zlib.crc32(body, self.crc)))
        return _TRAILER.size


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
    if version not in VERSIONS:
        raise BitstreamError(f"{name}: format version {version} is not supported (this codeclm reads versions "
                             f"{', '.join(map(str, VERSIONS))}; a newer codeclm may read it)")
    if flags != 0:
        raise BitstreamError(f"{name}: unknown header flags 0x{flags:04x}")
    lo = _min_header(version)
    if not lo <= header_size <= lo + MAX_NAME:
        raise BitstreamError(f"{name}: header size field says {header_size} bytes (valid: "
                             f"{lo}..{lo + MAX_NAME}); the file is corrupt")
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
    if lo + name_len != header_size:
        raise BitstreamError(f"{name}: model name length {name_len} does not match the header size")
    start = _PREFIX.size + _FIELDS.size
    file_id = body[start: lo - _CRC.size]
    try:
        model_name = body[lo - _CRC.size:].decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError(f"{name}: model name is not valid UTF-8") from None
    if not (math.isfinite(bw) and bw >= 0):
        raise BitstreamError(f"{name}: invalid bandwidth {bw!r} in header")
    header = Header(sr, ch, n_q, bins, hop, n, bw or None, chunk, model, model_name, sha.hex(), src_sr, src_ch,
                    file_id.hex(), version)
    _check_fields(header, name)
    return header


def read_chunks(f: BinaryIO, header: Header, name: str = "input") -> Iterator[Chunk]:
    """Yield the chunks after the header, verifying sizes, CRCs and the total frame count.

    Stops after the chunk that completes ``header.num_frames``, then (version 2) checks the
    trailer, and requires the end of file, so truncation (even at a chunk boundary), reordered,
    dropped, duplicated or foreign chunks and trailing bytes are all errors.
    """
    size = _size_of(f)
    done, index, running = 0, 0, 0
    v2 = header.version >= 2
    file_id = header.file_id_bytes() if v2 else b""
    tail = _TRAILER.size if v2 else 0  # bytes the trailer needs after the chunks
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
        if v2 and frames != min(header.chunk_frames, header.num_frames - done):
            raise BitstreamError(f"{name}: chunk {index} at byte {pos} holds {frames} frames, not "
                                 f"{min(header.chunk_frames, header.num_frames - done)}: only the last chunk may "
                                 "be short; the file is corrupt")
        limit = min(MAX_CHUNK_PAYLOAD, _payload_bound(frames, header.num_codebooks))
        if not 4 <= payload_size <= limit or payload_size % 4:
            raise BitstreamError(f"{name}: chunk {index} at byte {pos} claims a payload of {payload_size} bytes "
                                 f"(must be a multiple of 4 in 4..{limit}); the file is corrupt")
        if pos + _CHUNK.size + payload_size + tail > size:
            raise BitstreamError(f"{name}: truncated: chunk {index} needs {payload_size} payload bytes, only "
                                 f"{max(0, size - pos - _CHUNK.size - tail)} are left")
        payload = f.read(payload_size)
        if len(payload) != payload_size:
            raise BitstreamError(f"{name}: truncated inside chunk {index}")
        binding = _BINDING.pack(file_id, index, done) if v2 else b""
        if _chunk_crc(head[:8], payload, binding) != crc:
            where = (" (or it belongs at another position or to another file)" if v2 else "")
            raise BitstreamError(f"{name}: chunk {index} at byte {pos} fails its CRC32 check{where}: the file is "
                                 "corrupt")
        if v2:
            running = zlib.crc32(payload, zlib.crc32(head, running))
        yield Chunk(index, frames, payload, done)
        done += frames
        index += 1
    if v2:
        _check_trailer(f, header, name, index, done, running)
    extra = size - f.tell()
    if extra:
        raise BitstreamError(f"{name}: {extra} unexpected bytes after the last chunk; the file is corrupt")


def _check_trailer(f: BinaryIO, header: Header, name: str, chunks: int, frames: int, running: int) -> None:
    pos = f.tell()
    raw = f.read(_TRAILER.size)
    if len(raw) < _TRAILER.size:
        raise BitstreamError(f"{name}: truncated: the trailer after the last chunk (byte {pos}) is missing or cut")
    magic, n_chunks, n_frames, n_samples, file_id, crc = _TRAILER.unpack(raw)
    if magic != TRAILER_MAGIC:
        raise BitstreamError(f"{name}: no trailer after the last chunk (byte {pos}); the file is corrupt")
    if zlib.crc32(raw[:-_CRC.size], running) != crc:
        raise BitstreamError(f"{name}: whole-file checksum in the trailer does not match the chunks; the file is "
                             "corrupt")
    if (n_chunks, n_frames, n_samples, file_id.hex()) != (chunks, frames, header.num_samples, header.file_id):
        raise BitstreamError(f"{name}: trailer says {n_chunks} chunks, {n_frames} frames, {n_samples} samples, the "
                             f"file holds {chunks}, {frames}, {header.num_samples}; the file is corrupt")


def recompute_crcs(data: bytes) -> bytes:
    """``data`` (a version 1 or 2 ``.cclm`` file, possibly mutated) with its header, chunk and
    trailer CRCs made valid for the chunks where they now stand: for fuzzing the checks behind
    them. Bytes it cannot parse are left as they are."""
    b = bytearray(data)
    if len(b) < _PREFIX.size or b[:4] != MAGIC:
        return data
    version = struct.unpack_from("<H", b, 4)[0]
    size = struct.unpack_from("<I", b, 8)[0]
    if version not in VERSIONS or not _min_header(version) <= size <= len(b):
        return data
    b[size - 4: size] = _CRC.pack(zlib.crc32(bytes(b[: size - 4])))
    file_id = bytes(b[_PREFIX.size + _FIELDS.size: _PREFIX.size + _FIELDS.size + _FILE_ID])
    pos, index, offset, running = size, 0, 0, 0
    while pos + _CHUNK.size <= len(b) and (version == 1 or b[pos: pos + 4] != TRAILER_MAGIC):
        frames, n, _ = _CHUNK.unpack_from(b, pos)
        payload = bytes(b[pos + _CHUNK.size: pos + _CHUNK.size + n])
        binding = _BINDING.pack(file_id, index, offset) if version >= 2 else b""
        b[pos + 8: pos + 12] = _CRC.pack(_chunk_crc(bytes(b[pos: pos + 8]), payload, binding))
        running = zlib.crc32(bytes(b[pos: pos + _CHUNK.size + n]), running)
        pos, index, offset = pos + _CHUNK.size + n, index + 1, offset + frames
    if version >= 2 and pos + _TRAILER.size <= len(b) and b[pos: pos + 4] == TRAILER_MAGIC:
        end = pos + _TRAILER.size
        b[end - 4: end] = _CRC.pack(zlib.crc32(bytes(b[pos: end - 4]), running))
    return bytes(b)


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
