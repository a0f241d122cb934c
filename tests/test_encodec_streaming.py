"""The imported EnCodec (causal, reflect padding) streams exactly: any chunking == offline == transformers.

Reflect padding of a causal layer needs only the first ``k - s + 1`` samples of its input (the
left pad) and, at ``flush()``, the end of the signal (the right pad of the last partial frame),
so every frame, the last one included, is exact; the price is a start-up delay of a few frames.
"""

import random

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import EncodecConfig, EncodecModel  # noqa: E402

from codeclm.codec import Codec  # noqa: E402

PRIMES = [1, 2, 3, 7, 13, 31, 97, 241, 317, 479]


def _hf(**kw) -> EncodecModel:
    torch.manual_seed(0)
    cfg = EncodecConfig(num_filters=8, hidden_size=32, upsampling_ratios=[4, 4, 2], codebook_size=64,
                        sampling_rate=24000, target_bandwidths=[4.5, 9.0], **kw)
    model = EncodecModel(cfg).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_()
    return model


@pytest.fixture(scope="module")
def pair():
    hf = _hf()
    return hf, Codec.from_hf(hf)


def _chunks(total, sizes):
    pos, i = 0, 0
    while pos < total:
        n = sizes(i)
        yield pos, min(pos + n, total)
        pos, i = pos + n, i + 1


def _stream_encode(codec, wav, sizes, bandwidth):
    with codec.streaming(wav.shape[0]):
        parts = [codec.encode(wav[..., a:b], bandwidth) for a, b in _chunks(wav.shape[-1], sizes)]
        parts.append(codec.flush(bandwidth))
    return torch.cat(parts, -1)


def _stream_decode(codec, codes, sizes):
    with codec.streaming(codes.shape[0]):
        parts = [codec.decode(codes[..., a:b]) for a, b in _chunks(codes.shape[-1], sizes)]
        parts.append(codec.flush_decoder())
    return torch.cat(parts, -1)


@pytest.mark.parametrize("length", [32 * 40, 32 * 40 + 17, 1001, 95, 33, 5])
@pytest.mark.parametrize("batch", [1, 2])
def test_offline_matches_transformers(pair, length, batch):
    hf, codec = pair
    assert codec.can_stream and not codec.streamable
    torch.manual_seed(length)
    wav = 0.2 * torch.randn(batch, 1, length)
    with torch.no_grad():
        enc = hf.encode(wav, bandwidth=9.0)
        ref_audio = hf.decode(enc.audio_codes, enc.audio_scales)[0]
    codes = codec.encode(wav, 9.0)
    assert torch.equal(codes, enc.audio_codes[0])
    audio = codec.decode(codes)
    assert audio.shape == ref_audio.shape
    assert (audio - ref_audio).abs().max() <= 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_random_chunks_bit_exact(pair, seed, batch):
    _, codec = pair
    rng = random.Random(seed)
    torch.manual_seed(seed)
    wav = 0.2 * torch.randn(batch, 1, 32 * 50 + rng.randint(0, 31))
    codes = codec.encode(wav, 9.0)
    audio = codec.decode(codes)
    assert torch.equal(_stream_encode(codec, wav, lambda i: rng.randint(1, 300), 9.0), codes)
    assert torch.equal(_stream_decode(codec, codes, lambda i: rng.randint(1, 7)), audio)


@pytest.mark.parametrize("prime", PRIMES)
def test_prime_chunks_bit_exact(pair, prime):
    _, codec = pair
    torch.manual_seed(prime)
    wav = 0.2 * torch.randn(1, 1, 32 * 37 + 11)
    codes = codec.encode(wav)
    assert torch.equal(_stream_encode(codec, wav, lambda i: prime, None), codes)
    audio = codec.decode(codes)
    assert torch.equal(_stream_decode(codec, codes, lambda i: prime % 11 + 1), audio)


@pytest.mark.parametrize("length", [5, 33, 95, 200])  # shorter than the start-up delay
def test_short_streams_and_interleaved_roundtrip(pair, length):
    """Encode and decode interleaved (the real-time use): the concatenation equals offline,
    the last partial frame and the frames held back at the start included."""
    _, codec = pair
    torch.manual_seed(length)
    wav = 0.2 * torch.randn(1, 1, length)
    reference = codec.decode(codec.encode(wav))
    for chunk in (1, 7, 480):
        with codec.streaming(1):
            out = [codec.decode(codec.encode(wav[..., i:i + chunk])) for i in range(0, length, chunk)]
            out.append(codec.decode(codec.flush()))
        assert torch.equal(torch.cat(out, -1), reference)


def test_start_delay_and_protocol(pair):
    from codeclm.streaming import StreamingError

    _, codec = pair
    enc_delay, dec_delay = codec.start_delay_frames
    assert enc_delay >= 1 and dec_delay >= 1  # the k=7 convs at the frame rate wait for 7 frames
    wav = 0.2 * torch.randn(1, 1, 32 * 30)
    with codec.streaming(1):
        first = codec.encode(wav[..., :32])
        assert first.shape[-1] == 0  # held back: its left reflect pad needs later samples
        codec.encode(wav[..., 32:])
        codec.flush()
        with pytest.raises(StreamingError, match="flush"):
            codec.encode(wav)


def test_streaming_state_is_bounded(pair):
    _, codec = pair
    wav = 0.2 * torch.randn(1, 1, 32 * 300)
    with codec.streaming(1):
        for i in range(0, wav.shape[-1], 100):
            codec.encode(wav[..., i:i + 100])
        for m in codec.modules():
            st = getattr(m, "_streaming_state", None)
            if type(m).__name__ == "StreamingConv1d" and st is not None:
                assert st.pending is None and (st.previous is None or st.previous.shape[-1] <= 16)
