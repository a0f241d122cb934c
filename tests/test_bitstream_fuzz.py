"""Fuzzing the .cclm parser: mutated, truncated and lying bitstreams only ever raise CodecLMError.

A longer coverage-guided run with atheris lives in ``benchmarks/fuzz_atheris.py``.
"""

import functools
import struct
import zlib

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codeclm.codec import Codec, CodecConfig
from codeclm.compression import compress_tensor, decompress_tensor, read_info
from codeclm.compression.format import _FIELDS, _PREFIX
from codeclm.errors import CodecLMError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=1)
def codec_and_file() -> tuple[Codec, bytes]:
    """A tiny codec (hop 32, 4 x 64 codes) and a valid 0.1 s file of 5 chunks at 18 kbps."""
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, lstm_layers=1,
                              target_bandwidths=[4.5, 9.0, 18.0], kmeans_init=True, kmeans_iters=2)).train()
    t = torch.arange(4800) / 24000
    wav = (0.3 * torch.sin(2 * np.pi * 300 * t) + 0.02 * torch.randn(4800))[None]
    with torch.no_grad():
        codec(wav[None])
    codec.eval()
    return codec, compress_tensor(wav[:, :2400], codec, 18.0, chunk_seconds=0.02)


def parse_everything(data: bytes) -> None:
    """Run every reader on ``data``; anything but a CodecLMError is a bug."""
    codec, _ = codec_and_file()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for call in (lambda: read_info(data), lambda: read_info(data, verify=False),
                     lambda: decompress_tensor(data, codec)):
            try:
                call()
            except CodecLMError as exc:
                assert str(exc) and "\n" not in str(exc)
    finally:
        torch.set_num_threads(threads)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(codec_and_file()[1])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos: pos + draw(st.integers(1, 16))]
        else:
            new = draw(st.binary(min_size=1, max_size=16))
            data[pos: pos + len(new)] = new
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_bitstreams_raise_only_codeclm_errors(data):
    parse_everything(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codeclm_errors(data):
    parse_everything(data)
    parse_everything(b"CCLM" + data)


def with_header_fields(data: bytes, values: dict) -> bytes:
    """``data`` with some header fields replaced and the header CRC made valid again."""
    size = struct.unpack_from("<I", data, 8)[0]
    names = ["sample_rate", "channels", "num_codebooks", "bins", "hop_length", "num_samples", "bandwidth",
             "chunk_frames", "entropy_model", "source_sample_rate", "source_channels", "sha", "name_len"]
    fields = dict(zip(names, _FIELDS.unpack_from(data, _PREFIX.size)))
    fields.update(values)
    body = bytearray(data[: size - 4])
    body[_PREFIX.size: _PREFIX.size + _FIELDS.size] = _FIELDS.pack(*fields.values())
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))) + data[size:]


u16, u32, u64 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
LIES = st.fixed_dictionaries({}, optional={
    "sample_rate": u32, "channels": u16, "num_codebooks": u16, "bins": u32, "hop_length": u32,
    "num_samples": u64, "chunk_frames": u32, "entropy_model": st.integers(0, 255), "name_len": u16,
    "bandwidth": st.floats(allow_nan=True, allow_infinity=True), "source_sample_rate": u32})


@FUZZ
@given(LIES)
def test_lying_headers_with_valid_crc_raise_only_codeclm_errors(values):
    parse_everything(with_header_fields(codec_and_file()[1], values))


@FUZZ
@given(st.data())
def test_lying_chunks_with_valid_crc_raise_only_codeclm_errors(data):
    """Chunk records rewritten with arbitrary sizes/payloads and a correct CRC reach the decoder."""
    raw = bytearray(codec_and_file()[1])
    pos = struct.unpack_from("<I", raw, 8)[0]
    out = bytearray(raw[:pos])
    while pos + 12 <= len(raw):
        frames, size, _ = struct.unpack_from("<III", raw, pos)
        payload = bytes(raw[pos + 12: pos + 12 + size])
        if data.draw(st.booleans()):
            frames = data.draw(st.integers(0, 2**32 - 1) | st.integers(0, 200))
            payload = data.draw(st.binary(max_size=64) | st.just(payload[: len(payload) // 2]))
            size = data.draw(st.just(len(payload)) | st.integers(0, 2**32 - 1))
        head = struct.pack("<II", frames, size)
        out += head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
        pos += 12 + struct.unpack_from("<III", raw, pos)[1]
    parse_everything(bytes(out))


def test_the_unmutated_file_decodes():
    codec, data = codec_and_file()
    assert decompress_tensor(data, codec).shape == (1, 2400)
    assert read_info(data)["chunks"] == 5
