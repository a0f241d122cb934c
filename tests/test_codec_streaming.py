"""Streaming == offline, bit for bit, for any chunking (the codec's core promise)."""

import random

import pytest
import torch

from codeclm.codec import Codec
from codeclm.codec.layers import elu_exact
from codeclm.streaming import StreamingError

from conftest import tiny_codec_config


def _chunks(total, rng, lo=1, hi=300):
    pos = 0
    while pos < total:
        n = rng.randint(lo, hi)
        yield pos, min(pos + n, total)
        pos += n


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_streaming_encode_decode_bit_exact(tiny_codec, seed, batch):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    wav = 0.3 * torch.randn(batch, 1, 32 * 60 + rng.randint(0, 31))
    codes = tiny_codec.encode(wav, bandwidth=9.0)
    audio = tiny_codec.decode(codes)
    assert codes.shape == (batch, 2, -(-wav.shape[-1] // 32))
    assert audio.shape == (batch, 1, codes.shape[-1] * 32)
    with tiny_codec.streaming(batch_size=batch):
        parts = [tiny_codec.encode(wav[..., a:b], bandwidth=9.0) for a, b in _chunks(wav.shape[-1], rng)]
        parts.append(tiny_codec.flush(bandwidth=9.0))
    stream_codes = torch.cat(parts, -1)
    assert torch.equal(stream_codes, codes)
    with tiny_codec.streaming(batch_size=batch):
        pieces = [tiny_codec.decode(codes[..., a:b]) for a, b in _chunks(codes.shape[-1], rng, 1, 7)]
    assert torch.equal(torch.cat(pieces, -1), audio)  # bit-exact, not allclose


def test_streaming_chunk_by_chunk_roundtrip_and_reset(tiny_codec):
    """Encode and decode interleaved (the real-time use), and reset between two streams."""
    torch.manual_seed(3)
    wav = 0.3 * torch.randn(1, 1, 32 * 40)
    reference = tiny_codec.decode(tiny_codec.encode(wav))
    with tiny_codec.streaming(1):
        for _ in range(2):
            out = [tiny_codec.decode(tiny_codec.encode(wav[..., i:i + 480])) for i in range(0, wav.shape[-1], 480)]
            assert torch.equal(torch.cat(out, -1), reference)
            tiny_codec.reset_streaming()


def test_streaming_state_is_bounded(tiny_codec):
    wav = torch.randn(1, 1, 32 * 200)
    with tiny_codec.streaming(1):
        for i in range(0, wav.shape[-1], 100):
            tiny_codec.encode(wav[..., i:i + 100])
        sizes = [m._streaming_state.previous.numel() for m in tiny_codec.modules()
                 if type(m).__name__ == "StreamingConv1d" and m._streaming_state.previous is not None]
        assert max(sizes) <= 64 * 8  # a few samples of context per layer, independent of length
        assert tiny_codec._streaming_state["buffer"].shape[-1] < tiny_codec.hop_length


def test_streaming_protocol_errors(tiny_codec):
    with tiny_codec.streaming(1):
        with pytest.raises(StreamingError):
            with tiny_codec.streaming(1):
                pass
        with pytest.raises(StreamingError, match="batch"):
            tiny_codec.encode(torch.zeros(2, 1, 64))
    with pytest.raises(StreamingError):
        tiny_codec.flush()
    assert not tiny_codec.is_streaming


def test_non_streamable_model_refuses_to_stream():
    codec = Codec(tiny_codec_config(causal=False)).eval()
    with pytest.raises(StreamingError, match="causal"):
        with codec.streaming(1):
            pass


def test_offline_blocks_do_not_change_results(tiny_codec, monkeypatch):
    """Long inputs run in blocks of frames; the block size must not change a single bit."""
    import codeclm.codec.model as model

    wav = 0.3 * torch.randn(1, 1, 32 * 50)
    codes, audio = tiny_codec.encode(wav), None
    audio = tiny_codec.decode(codes)
    monkeypatch.setattr(model, "_OFFLINE_BLOCK_FRAMES", 7)
    assert torch.equal(tiny_codec.encode(wav), codes)
    assert torch.equal(tiny_codec.decode(codes), audio)


def test_streaming_matches_training_path_numerically(tiny_codec):
    """Frame-synchronous maths equals the plain full-signal convolutions up to float rounding."""
    wav = 0.3 * torch.randn(1, 1, 32 * 30)
    with torch.no_grad():
        plain = tiny_codec.decoder(tiny_codec.quantizer.decode(tiny_codec.quantizer.encode(tiny_codec.encoder(wav))))
    assert torch.allclose(plain, tiny_codec.decode(tiny_codec.encode(wav)), atol=1e-5)


def test_elu_exact_is_position_independent():
    x = torch.randn(100_003) * 3
    full = elu_exact(x)
    assert torch.allclose(full, torch.nn.functional.elu(x), rtol=1e-6, atol=1e-7)
    for start, n in [(0, 1), (5, 17), (1000, 31), (77, 5000), (3, 70000)]:
        assert torch.equal(elu_exact(x[start:start + n]), full[start:start + n])


def test_latency_reported(tiny_codec):
    assert tiny_codec.latency == pytest.approx(32 / 24000)


@pytest.mark.parametrize("threads", [1, 2])
def test_streaming_exact_for_any_thread_count(threads):
    """Kernel choice must not depend on batch size or threads (torch's own heuristics do)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        codec = Codec(tiny_codec_config(n_filters=8, dimension=64, ratios=[5, 4, 2], bins=128,
                                        target_bandwidths=[8.4, 16.8], lstm_layers=2)).eval()
        wav = 0.3 * torch.randn(1, 1, 40 * 90)
        codes = codec.encode(wav)
        audio = codec.decode(codes)
        rng = random.Random(threads)
        with codec.streaming(1):
            parts = [codec.encode(wav[..., a:b]) for a, b in _chunks(wav.shape[-1], rng, 1, 500)]
        assert torch.equal(torch.cat(parts, -1), codes)
        with codec.streaming(1):
            pieces = [codec.decode(codes[..., a:b]) for a, b in _chunks(codes.shape[-1], rng, 1, 4)]
        assert torch.equal(torch.cat(pieces, -1), audio)
    finally:
        torch.set_num_threads(previous)
