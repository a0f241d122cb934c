"""Compress audio files to ``.cclm`` and back, chunk by chunk with the streaming codec.

>>> stats = compress_file("talk.wav", "talk.cclm", bandwidth=6.0, model="checkpoints/codec")
>>> decompress_file("talk.cclm", "talk.out.wav", model="checkpoints/codec")
>>> data = compress_tensor(wav, codec, bandwidth=6.0)   # in memory: bytes
>>> wav2 = decompress_tensor(data, codec)                # == codec.decode(codec.encode(wav))[..., :T]

Memory is bounded whatever the file length: audio is read, resampled (``soxr.ResampleStream``)
and encoded one block (``chunk_seconds``, default 1 s) at a time inside ``codec.streaming()``, and
decoded the same way, so the peak is a few blocks of activations plus the entropy model's tables
(see ``docs/format.md``). Because the codec streams bit-exactly, the result equals whole-file
processing. Outputs are written to a temporary file in the destination folder and renamed on
success, so a failure never leaves a partial file. ``"-"`` means stdin/stdout.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm import tqdm

from codeclm.audio import audio_info, convert_channels, format_for_path
from codeclm.codec import Codec, CompressionModel, load_model
from codeclm.compression.entropy import ADAPTIVE_MODEL_ID, MAX_CHUNK_FRAMES, AdaptiveCodeModel
from codeclm.compression.format import ChunkWriter, Header, read_chunks, read_header, write_header
from codeclm.errors import AudioError, BitstreamError, CodecLMError, ConfigError
from codeclm.fileio import atomic_output, cleanup_on_signals, os_error

__all__ = ["CompressionStats", "compress_file", "compress_tensor",
           "decompress_file", "decompress_tensor", "load_codec", "read_info"]

STDIO = "-"
CHUNK_SECONDS = 5.0  # per chunk: 12 bytes of header + ~6 bytes of range-coder flush and modes
BLOCK_SECONDS = 1.0  # audio encoded / codes decoded at a time: what bounds memory


@dataclass
class CompressionStats:
    """Sizes and bitrates of one compressed stream."""

    duration: float  # seconds of audio (at the codec's rate)
    num_frames: int
    num_codebooks: int
    file_bytes: int  # the whole .cclm file
    payload_bytes: int  # entropy-coded codes only
    raw_kbps: float  # n_q * log2(bins) bits per frame, as the codec's nominal bandwidth

    @property
    def coded_kbps(self) -> float:
        return self.payload_bytes * 8 / self.duration / 1000

    @property
    def file_kbps(self) -> float:
        return self.file_bytes * 8 / self.duration / 1000

    @property
    def saving(self) -> float:
        """Fraction of the raw code bits saved by entropy coding (0.2 = 20 % smaller)."""
        return 1.0 - self.coded_kbps / self.raw_kbps

    def summary(self) -> str:
        return (f"{self.duration:.2f} s, {self.num_codebooks} codebooks: raw {self.raw_kbps:.2f} kbps -> coded "
                f"{self.coded_kbps:.2f} kbps ({100 * self.saving:.1f}% saved), file {self.file_kbps:.2f} kbps")


def load_codec(model: str | os.PathLike | CompressionModel | None = None) -> CompressionModel:
    """A codec object as is, a model folder, or None for the shipped default."""
    codec = model if isinstance(model, CompressionModel) else load_model(model)
    if getattr(codec.config, "normalize", False):
        raise ConfigError(f"codec {codec.config.name!r} normalises loudness per chunk; .cclm files do not "
                          "store the scales, use a codec without normalize")
    return codec


# -- compression ---------------------------------------------------------------------------------
def compress_file(src: str | os.PathLike, dst: str | os.PathLike, *, model=None, bandwidth: float | None = 6.0,
                  force: bool = False, quiet: bool = True, chunk_seconds: float = CHUNK_SECONDS,
                  block_seconds: float = BLOCK_SECONDS, file_id: bytes | None = None) -> CompressionStats:
    """Compress the audio file ``src`` into ``dst`` (``.cclm``); returns the sizes and bitrates.

    ``chunk_seconds`` is the length of a checksummed chunk; audio is read and encoded in blocks of
    ``block_seconds`` (the memory bound), which does not change the result. ``dst`` is published
    only if no file took its name meanwhile (unless ``force``). ``file_id`` (16 bytes, default
    random) is the id that binds the chunks to the file.
    """
    _check_seconds(chunk_seconds, "chunk_seconds")
    _check_seconds(block_seconds, "block_seconds")
    _check_output(dst, force)
    with cleanup_on_signals(), _writing(dst), _input_file(src, binary=False) as path:
        info = _audio_info(path, _label(src))
        if info.frames == 0:
            raise AudioError(f"{_label(src)}: audio is empty (0 samples)")
        codec = load_codec(model)
        if not quiet and (info.samplerate != codec.sample_rate or info.channels != codec.channels):
            print(f"codeclm: note: {_label(src)} is {_layout(info.samplerate, info.channels)}; the codec takes "
                  f"{_layout(codec.sample_rate, codec.channels)}: the audio is converted before encoding and "
                  "decompresses at the codec's rate", file=sys.stderr)
        with _atomic_output(dst, force) as tmp, open(tmp, "wb") as out, \
                tqdm(total=round(info.duration, 2), unit="s", disable=_quiet(quiet), desc="compress") as bar:
            blocks = _read_blocks(path, _label(src), codec, block_seconds, bar)
            return _compress(blocks, out, codec, bandwidth, chunk_seconds, info.samplerate, info.channels,
                             _label(src), file_id)


def compress_tensor(wav: torch.Tensor, codec: Codec, bandwidth: float | None = 6.0,
                    chunk_seconds: float = CHUNK_SECONDS, block_seconds: float = BLOCK_SECONDS,
                    file_id: bytes | None = None) -> bytes:
    """Compress ``wav`` (``[C, T]`` at the codec's rate and channels) to ``.cclm`` bytes.

    ``file_id`` (16 bytes) fixes the file id, which is random by default: two compressions of
    the same audio then give the same bytes."""
    _check_seconds(chunk_seconds, "chunk_seconds")
    _check_seconds(block_seconds, "block_seconds")
    codec = load_codec(codec)
    wav = torch.as_tensor(wav).float()
    if wav.dim() != 2 or wav.shape[0] != codec.channels or wav.shape[-1] == 0:
        raise AudioError(f"compress_tensor expects non-empty [{codec.channels}, samples] audio, got "
                         f"{tuple(wav.shape)}")
    step = max(1, int(block_seconds * codec.sample_rate))
    out = io.BytesIO()
    _compress((wav[:, i: i + step] for i in range(0, wav.shape[-1], step)), out, codec, bandwidth,
              chunk_seconds, codec.sample_rate, codec.channels, "tensor", file_id)
    return out.getvalue()


def _compress(blocks: Iterator[torch.Tensor], out: BinaryIO, codec: Codec, bandwidth: float | None,
              chunk_seconds: float, source_rate: int, source_channels: int, label: str,
              file_id: bytes | None = None) -> CompressionStats:
    """Encode audio blocks, entropy-code them chunk by chunk into ``out`` (seekable)."""
    n_q = codec.num_codebooks_for(bandwidth)
    _check_seconds(chunk_seconds, "chunk_seconds")
    chunk_frames = int(min(MAX_CHUNK_FRAMES, max(1, round(chunk_seconds * codec.frame_rate))))
    identity = codec.identity()
    file_id = os.urandom(16) if file_id is None else bytes(file_id)
    if len(file_id) != 16:
        raise BitstreamError(f"file_id must be 16 bytes, got {len(file_id)}")

    def header(num_samples: int) -> Header:
        return Header(codec.sample_rate, codec.channels, n_q, codec.cardinality, codec.hop_length,
                      num_samples, bandwidth, chunk_frames, ADAPTIVE_MODEL_ID, identity["name"],
                      identity["sha256"], source_rate, source_channels, file_id.hex())

    start = out.tell()
    header_size = write_header(out, header(1))  # placeholder: the length is known at the end
    writer = ChunkWriter(out, header(1))
    coder = AdaptiveCodeModel(n_q, codec.cardinality)
    pending, num_samples, payload_bytes, frames_written = [], 0, 0, 0

    def emit(final: bool) -> None:
        nonlocal pending, payload_bytes, frames_written
        codes = np.concatenate(pending, axis=1) if pending else np.zeros((n_q, 0), np.int64)
        cut = codes.shape[1] if final else codes.shape[1] - codes.shape[1] % chunk_frames
        for i in range(0, cut, chunk_frames):
            payload = coder.encode_chunk(codes[:, i: i + chunk_frames])
            writer.write(min(chunk_frames, cut - i), payload)
            payload_bytes += len(payload)
        frames_written += cut
        pending = [codes[:, cut:]]

    def counted(stream: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        nonlocal num_samples
        for block in stream:
            num_samples += block.shape[-1]
            yield block

    for codes in _encode_blocks(counted(blocks), codec, bandwidth):
        pending.append(codes)
        if sum(c.shape[1] for c in pending) >= chunk_frames:
            emit(final=False)
    emit(final=True)
    if num_samples == 0:
        raise AudioError(f"{label}: audio is empty (0 samples)")
    if frames_written != -(-num_samples // codec.hop_length):
        raise BitstreamError(f"{label}: the codec gave {frames_written} frames for {num_samples} samples, "
                             f"expected ceil(samples / {codec.hop_length})")
    writer.finish(num_samples)
    end = out.tell()
    out.seek(start)
    if write_header(out, header(num_samples)) != header_size:
        raise BitstreamError("internal error: header size changed")
    out.seek(end)
    return CompressionStats(num_samples / codec.sample_rate, -(-num_samples // codec.hop_length), n_q,
                            end - start, payload_bytes, codec.bandwidth_of(n_q))


def _encode_blocks(blocks: Iterator[torch.Tensor], codec: Codec, bandwidth: float | None) -> Iterator[np.ndarray]:
    """Codes ``[n_q, frames]`` of consecutive audio blocks: streaming, or offline for codecs that can't."""
    if not codec.streamable:  # imported EnCodec (reflect padding), DAC (non-causal): offline, whole signal
        wav = torch.cat(list(blocks), -1)
        if wav.shape[-1]:
            yield codec.encode(wav[None], bandwidth)[0].numpy()
        return
    with codec.streaming(batch_size=1):
        for block in blocks:
            codes = codec.encode(block[None], bandwidth)[0]
            if codes.shape[-1]:
                yield codes.numpy()
        tail = codec.flush(bandwidth)[0]
        if tail.shape[-1]:
            yield tail.numpy()


def _layout(sample_rate: int, channels: int) -> str:
    return f"{sample_rate} Hz " + {1: "mono", 2: "stereo"}.get(channels, f"{channels}-channel")


def _read_blocks(path: Path, label: str, codec: Codec, block_seconds: float, bar: tqdm) -> Iterator[torch.Tensor]:
    """Audio of ``path`` as float32 ``[channels, samples]`` blocks at the codec's rate and channels."""
    try:
        with sf.SoundFile(str(path)) as f:
            sr, block = f.samplerate, max(1, int(block_seconds * f.samplerate))
            resampler = None
            if sr != codec.sample_rate:
                resampler = soxr.ResampleStream(sr, codec.sample_rate, codec.channels, dtype="float64",
                                                quality="HQ")
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                last = len(data) < block
                wav = convert_channels(torch.from_numpy(np.ascontiguousarray(data.T)), codec.channels)
                if not torch.isfinite(wav).all():
                    raise AudioError(f"{label}: audio contains NaN or infinite samples")
                if resampler is not None:
                    out = resampler.resample_chunk(wav.double().numpy().T, last=last)
                    wav = torch.from_numpy(np.ascontiguousarray(out.T)).float()
                bar.update(round(len(data) / sr, 2))
                if wav.shape[-1]:
                    yield wav
                if last:
                    return
    except CodecLMError:
        raise
    except Exception as exc:  # libsndfile errors on corrupt data
        raise AudioError(f"{label}: could not read audio ({_short(exc)})") from None


# -- decompression -------------------------------------------------------------------------------
def decompress_file(src: str | os.PathLike, dst: str | os.PathLike, *, model=None, force: bool = False,
                    quiet: bool = True, format: str | None = None, subtype: str | None = None) -> Header:
    """Decompress ``src`` (``.cclm``) to an audio file (wav/flac/ogg by extension or ``format``)."""
    if format is None:
        format = "WAV" if str(dst) == STDIO else format_for_path(Path(dst))
    _check_output(dst, force)
    with cleanup_on_signals(), _writing(dst), _input_file(src, binary=True) as path, open(path, "rb") as f:
        header = read_header(f, _label(src))
        codec = load_codec(model)
        check_model(header, codec, _label(src))
        with _atomic_output(dst, force) as tmp:
            try:
                out = sf.SoundFile(str(tmp), "w", samplerate=header.sample_rate, channels=header.channels,
                                   format=format, subtype=subtype)
            except Exception as exc:
                raise AudioError(f"{_label(dst)}: cannot write {format} audio ({_short(exc)})") from None
            with out, tqdm(total=round(header.duration, 2), unit="s", disable=_quiet(quiet),
                           desc="decompress") as bar:
                for block in _decode_chunks(f, header, codec, _label(src)):
                    _write_audio(out, block.clamp(-1.0, 1.0).numpy().T, dst)
                    bar.update(round(block.shape[-1] / header.sample_rate, 2))
    return header


def _write_audio(out: sf.SoundFile, data: np.ndarray, dst) -> None:
    """``out.write`` with a full disk or a write error as one line (libsndfile raises RuntimeError)."""
    try:
        out.write(data)
    except OSError:
        raise
    except Exception as exc:
        raise AudioError(f"{_label(dst)}: could not write audio ({_short(exc)}; is the disk full?)") from None


def decompress_tensor(data: bytes, codec: Codec, name: str = "bitstream") -> torch.Tensor:
    """Decode ``.cclm`` bytes to float audio ``[C, T]`` (not clamped), T the exact original length."""
    codec = load_codec(codec)
    f = io.BytesIO(bytes(data))
    header = read_header(f, name)
    check_model(header, codec, name)
    return torch.cat(list(_decode_chunks(f, header, codec, name)), -1)


def check_model(header: Header, codec: Codec, name: str) -> None:
    """Refuse to decode with a codec other than the one that encoded ``header``'s file."""
    identity = codec.identity()
    if (header.model_name, header.model_sha256) != (identity["name"], identity["sha256"]):
        raise BitstreamError(
            f"{name}: was compressed with model {header.model_name!r} (weights sha256 {header.model_sha256[:12]}) "
            f"but the loaded model is {identity['name']!r} (sha256 {identity['sha256'][:12]}); pass --model with "
            "the model folder that compressed it")
    expected = (codec.sample_rate, codec.channels, codec.cardinality, codec.hop_length)
    found = (header.sample_rate, header.channels, header.bins, header.hop_length)
    if found != expected or header.num_codebooks > codec.num_codebooks:
        raise BitstreamError(f"{name}: header (rate, channels, bins, hop) = {found} with {header.num_codebooks} "
                             f"codebooks does not match the model's {expected}; the file is corrupt")
    if header.entropy_model != ADAPTIVE_MODEL_ID:
        raise BitstreamError(f"{name}: unknown entropy model {header.entropy_model} (this codeclm knows "
                             f"{ADAPTIVE_MODEL_ID})")


def _decode_chunks(f: BinaryIO, header: Header, codec: Codec, name: str) -> Iterator[torch.Tensor]:
    """Audio ``[C, samples]`` chunk by chunk, trimmed to ``header.num_samples`` in total."""
    coder = AdaptiveCodeModel(header.num_codebooks, header.bins)
    left = header.num_samples
    chunks = read_chunks(f, header, name)

    def codes() -> Iterator[torch.Tensor]:
        for chunk in chunks:
            try:
                yield torch.from_numpy(coder.decode_chunk(chunk.payload, chunk.frames))[None]
            except BitstreamError as exc:
                raise BitstreamError(f"{name}: chunk {chunk.index}: {exc}") from None

    if not codec.streamable:
        audio = codec.decode(torch.cat(list(codes()), -1))[0]
        yield audio[:, :left]
        return
    step = max(1, round(BLOCK_SECONDS * codec.frame_rate))
    with codec.streaming(batch_size=1):
        for chunk_codes in codes():
            for i in range(0, chunk_codes.shape[-1], step):
                audio = codec.decode(chunk_codes[..., i: i + step])[0][:, :left]
                left -= audio.shape[-1]
                yield audio
        yield codec.flush_decoder()[0][:, :left]  # a decoder that looks ahead holds the last frames back


def read_info(src: str | os.PathLike | bytes, verify: bool = True) -> dict:
    """The header of a ``.cclm`` file (path or bytes) as a dict; ``verify`` also checks every chunk."""
    if isinstance(src, (bytes, bytearray)):
        return _info(io.BytesIO(bytes(src)), "bitstream", verify)
    with cleanup_on_signals(), _input_file(src, binary=True) as path, open(path, "rb") as f:
        return _info(f, _label(src), verify)


def _info(f: BinaryIO, label: str, verify: bool) -> dict:
    header = read_header(f, label)
    info = header.to_dict()
    info["file_bytes"] = _size(f)
    info["raw_kbps"] = header.raw_bits_per_frame * header.frame_rate / 1000
    info["file_kbps"] = info["file_bytes"] * 8 / header.duration / 1000
    if verify:  # CRCs, binding, trailer, and every payload through the range decoder (no codec needed)
        coder = AdaptiveCodeModel(header.num_codebooks, header.bins) if header.entropy_model == ADAPTIVE_MODEL_ID \
            else None
        chunks = 0
        for chunk in read_chunks(f, header, label):
            if coder is not None:
                try:
                    coder.decode_chunk(chunk.payload, chunk.frames)
                except BitstreamError as exc:
                    raise BitstreamError(f"{label}: chunk {chunk.index}: {exc}") from None
            chunks += 1
        info["chunks"] = chunks
    return info


# -- files ---------------------------------------------------------------------------------------
def _check_seconds(value, name: str) -> None:
    try:
        ok = math.isfinite(value) and value > 0
    except TypeError:
        ok = False
    if not ok:
        raise CodecLMError(f"{name} must be a positive number of seconds, got {value!r}")


def _audio_info(path: Path, label: str):
    """``audio_info`` naming ``label`` (e.g. ``<stdin>``), not the temporary copy it reads."""
    try:
        return audio_info(path)
    except AudioError as exc:
        raise AudioError(str(exc).replace(str(path), label)) from None


@contextmanager
def _writing(dst) -> Iterator[None]:
    """OSErrors while writing (disk full, read-only folder, file too large) as one line naming
    ``dst``; a closed pipe (BrokenPipeError) goes on to the caller."""
    try:
        yield
    except (BrokenPipeError, CodecLMError):
        raise
    except OSError as exc:
        raise os_error(_label(dst), exc) from None


def _spool(source: BinaryIO, label: str, prefix: str) -> Path:
    """Copy a stream (stdin, a FIFO) once into a temporary file; the caller removes it."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix)
    except OSError as exc:
        raise os_error(label, exc, f"cannot create a temporary copy in {tempfile.gettempdir()}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(source, f)
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise os_error(label, exc, f"cannot copy into a temporary file in {tempfile.gettempdir()}") from None
        raise
    return Path(tmp)


@contextmanager
def _input_file(src, binary: bool) -> Iterator[Path]:
    """A seekable regular file for ``src``: stdin (``-``) and FIFOs, character devices and other
    streams are read exactly once into a temporary file, removed afterwards (also on Ctrl-C and,
    under :func:`cleanup_on_signals`, SIGTERM/SIGHUP)."""
    error = BitstreamError if binary else AudioError
    if str(src) == STDIO:
        tmp = _spool(sys.stdin.buffer, _label(src), "codeclm-stdin-")
    else:
        path = Path(src)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise error(f"{path}: no such file") from None
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror})") from None
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a directory, not a file")
        if stat.S_ISREG(mode):
            yield path
            return
        try:  # a FIFO or device: opened once, copied once (audio_info + reading would open it twice)
            stream = open(path, "rb")
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror})") from None
        with stream:
            tmp = _spool(stream, str(path), "codeclm-input-")
    try:
        yield tmp
    finally:
        os.unlink(tmp)


def _check_output(dst, force: bool) -> None:
    """Refuse a directory, an existing file (unless ``force``) or a missing folder as output."""
    if str(dst) == STDIO:
        return
    dst = Path(dst)
    if dst.is_dir():
        raise CodecLMError(f"{dst}: is a directory; give an output file name")
    if os.path.lexists(dst) and not force:
        raise CodecLMError(f"{dst}: already exists (use --force to overwrite)")
    if not dst.parent.is_dir():
        raise CodecLMError(f"{dst}: folder {dst.parent} does not exist")


@contextmanager
def _atomic_output(dst, force: bool) -> Iterator[Path]:
    """A temporary path that becomes ``dst`` only if the block succeeds (``-``: copied to stdout).

    Without ``force`` the file is published only if ``dst`` is still free at that moment, so a
    file created there meanwhile (another run, the user) is never replaced."""
    _check_output(dst, force)
    if str(dst) != STDIO:
        with atomic_output(dst, replace=force) as tmp:
            yield tmp
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix="codeclm-stdout-")
    except OSError as exc:
        raise os_error("<stdout>", exc, f"cannot create a temporary file in {tempfile.gettempdir()}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    finally:
        os.unlink(tmp)


def _size(f: BinaryIO) -> int:
    pos = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return end


def _label(src) -> str:
    return "<stdin>" if str(src) == STDIO else str(src)


def _quiet(quiet: bool) -> bool:
    return quiet or not sys.stderr.isatty()


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
