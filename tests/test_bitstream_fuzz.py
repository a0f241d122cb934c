"""Fuzzing the .cclm parser: mutated, truncated and lying bitstreams only ever raise CodecLMError;
chunks reordered, dropped, duplicated or re-sized with valid CRCs are refused or decode to no more
than their payload can encode.

A longer coverage-guided run with atheris lives in ``benchmarks/fuzz_atheris.py``.
"""

import functools
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codeclm.codec import Codec, CodecConfig
from codeclm.compression import compress_tensor, decompress_tensor, read_info
from codeclm.compression.entropy import AdaptiveCodeModel
from codeclm.compression.format import _FIELDS, _PREFIX, _TRAILER, read_chunks, read_header, recompute_crcs
from codeclm.errors import BitstreamError, CodecLMError

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


def parse_everything(data: bytes) -> bool:
    """Run every reader on ``data``; anything but a CodecLMError is a bug. Whatever decodes must
    be no more than its payload can encode (:func:`assert_bounded_by_payload`). True if it decoded."""
    codec, _ = codec_and_file()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decoded = False
    try:
        for call in (lambda: read_info(data), lambda: read_info(data, verify=False),
                     lambda: decompress_tensor(data, codec)):
            try:
                out = call()
            except CodecLMError as exc:
                assert str(exc) and "\n" not in str(exc)
                continue
            if isinstance(out, torch.Tensor):
                decoded = True
                assert_bounded_by_payload(data, out)
    finally:
        torch.set_num_threads(threads)
    return decoded


def assert_bounded_by_payload(data: bytes, audio: torch.Tensor) -> None:
    """The decoded audio has exactly the header's length, and its codes re-encode into no more
    bytes than the chunks gave (+ one flush word per chunk): nothing came from beyond the data."""
    import io

    f = io.BytesIO(data)
    header = read_header(f)
    assert audio.shape[-1] == header.num_samples
    dec, enc = AdaptiveCodeModel(header.num_codebooks, header.bins), AdaptiveCodeModel(header.num_codebooks,
                                                                                       header.bins)
    for chunk in read_chunks(f, header):
        codes = dec.decode_chunk(chunk.payload, chunk.frames)
        assert len(enc.encode_chunk(codes)) <= len(chunk.payload) + 4, chunk.index


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
    parse_everything(recompute_crcs(data))  # the same mutation behind valid CRCs


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


def split_chunks(data: bytes) -> tuple[bytes, list[tuple[int, bytes]], bytes]:
    """(header bytes, [(frames, payload)], trailer bytes) of a valid version-2 file."""
    pos = struct.unpack_from("<I", data, 8)[0]
    head, chunks = data[:pos], []
    while pos + _TRAILER.size < len(data):
        frames, size, _ = struct.unpack_from("<III", data, pos)
        chunks.append((frames, data[pos + 12: pos + 12 + size]))
        pos += 12 + size
    return head, chunks, data[pos:]


def join_chunks(head: bytes, chunks, trailer: bytes) -> bytes:
    return head + b"".join(struct.pack("<III", f, len(p), 0) + p for f, p in chunks) + trailer


@FUZZ
@given(st.data())
def test_lying_chunks_with_valid_crc_raise_only_codeclm_errors(data):
    """Chunk records rewritten with arbitrary sizes/payloads and a correct CRC reach the decoder;
    whatever decodes is bounded by its payload."""
    head, chunks, trailer = split_chunks(codec_and_file()[1])
    out = []
    for frames, payload in chunks:
        if data.draw(st.booleans()):
            frames = data.draw(st.integers(0, 2**32 - 1) | st.integers(0, 200) | st.just(2**14))
            payload = data.draw(st.binary(max_size=64) | st.just(payload[: len(payload) // 2])
                                | st.just(payload + bytes(4 * data.draw(st.integers(1, 4)))))
        out.append((frames, payload))
    raw = join_chunks(head, out, trailer)
    if data.draw(st.booleans()):  # also lie about the sizes themselves
        pos = len(head) + 4 * data.draw(st.integers(0, 3 * len(out) - 1))
        raw = raw[:pos] + struct.pack("<I", data.draw(u32)) + raw[pos + 4:]
    parse_everything(recompute_crcs(raw))


@FUZZ
@given(st.data())
def test_reordered_dropped_or_duplicated_chunks_are_refused(data):
    """Any change of chunk order is refused as it stands (the CRCs bind index and offset); with the
    CRCs recomputed for the new positions (an attacker's file) only CodecLMErrors or bounded output."""
    head, chunks, trailer = split_chunks(codec_and_file()[1])
    n = len(chunks)
    kind = data.draw(st.sampled_from(["permute", "drop", "duplicate", "splice"]))
    if kind == "permute":
        order = data.draw(st.permutations(range(n)).filter(lambda o: list(o) != list(range(n))))
        new = [chunks[i] for i in order]
    elif kind == "drop":
        i = data.draw(st.integers(0, n - 1))
        new = chunks[:i] + chunks[i + 1:]
    elif kind == "duplicate":
        i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n))
        new = chunks[:j] + [chunks[i]] + chunks[j:]
    else:  # a chunk of another file of the same codec, with its own (valid for that file) CRC
        other = split_chunks(other_file())[1]
        i = data.draw(st.integers(0, n - 1))
        new = chunks[:i] + [other[i]] + chunks[i + 1:]
    raw = bytearray(head + b"".join(struct.pack("<III", f, len(p), 0) + p for f, p in new) + trailer)
    original = codec_and_file()[1]
    fixed = recompute_crcs(bytes(raw))  # every CRC valid for where the chunks now stand ...
    if kind == "splice":  # ... except the spliced chunk keeps the CRC it had in its own file
        pos = len(head) + sum(12 + len(p) for _, p in new[:i])
        other_raw = other_file()
        other_pos = struct.unpack_from("<I", other_raw, 8)[0] + sum(12 + len(p) for _, p in other[:i])
        fixed = fixed[:pos + 8] + other_raw[other_pos + 8: other_pos + 12] + fixed[pos + 12:]
        with pytest.raises(BitstreamError, match=f"chunk {i} .*CRC32"):
            read_info(fixed)
        return
    as_stored = bytearray(fixed)
    # put back the CRCs the chunks had in the original file: a plain reorder/drop/duplicate
    pos_new, origin = len(head), {}
    pos_old = len(head)
    for k, (f, p) in enumerate(chunks):
        origin.setdefault((f, p), original[pos_old + 8: pos_old + 12])
        pos_old += 12 + len(p)
    for f, p in new:
        as_stored[pos_new + 8: pos_new + 12] = origin[(f, p)]
        pos_new += 12 + len(p)
    with pytest.raises(BitstreamError):
        read_info(bytes(as_stored))
    parse_everything(fixed)


@functools.lru_cache(maxsize=1)
def other_file() -> bytes:
    """Another file of the same codec and length (other audio, its own file id)."""
    codec, _ = codec_and_file()
    t = torch.arange(2400) / 24000
    return compress_tensor((0.2 * torch.sin(2 * np.pi * 450 * t))[None], codec, 18.0, chunk_seconds=0.02)


def test_the_unmutated_file_decodes():
    codec, data = codec_and_file()
    assert decompress_tensor(data, codec).shape == (1, 2400)
    assert read_info(data)["chunks"] == 5
    assert recompute_crcs(data) == data
    assert parse_everything(data)
