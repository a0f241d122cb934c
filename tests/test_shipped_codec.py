"""The shipped default codec (checkpoints/codec): loads, streams exactly, reconstructs speech."""

import pytest
import torch

from codeclm.audio import load_audio
from codeclm.codec import load_model
from codeclm.metrics import mel_distance
from codeclm.pretrained import CHECKPOINTS_DIR

pytestmark = pytest.mark.skipif(not (CHECKPOINTS_DIR / "codec" / "config.json").exists(),
                                reason="no shipped checkpoints/codec")


@pytest.fixture(scope="module")
def codec():
    return load_model()  # whatever codec class the shipped folder holds


@pytest.fixture(scope="module")
def speech(codec):
    wav, _ = load_audio(CHECKPOINTS_DIR.parent / "examples" / "speech.wav", codec.sample_rate, codec.channels)
    return wav[:, : 2 * codec.sample_rate]


def test_default_codec_contract(codec):
    assert codec.sample_rate == 24000 and codec.channels == 1 and codec.frame_rate == 50
    assert codec.streamable
    assert [codec.num_codebooks_for(b) for b in (1.5, 3, 6, 12)] == [3, 6, 12, 24]


def test_default_codec_streams_exactly(codec, speech):
    codes = codec.encode(speech[None], bandwidth=6)
    audio = codec.decode(codes)
    with codec.streaming(1):
        parts = [codec.encode(speech[None, :, i:i + 700], bandwidth=6) for i in range(0, speech.shape[-1], 700)]
        parts.append(codec.flush(bandwidth=6))
        out = [codec.decode(p) for p in parts]
    assert torch.equal(torch.cat(parts, -1), codes)
    assert torch.equal(torch.cat(out, -1), audio)


def test_default_codec_reconstructs_better_than_silence_and_improves_with_bandwidth(codec, speech):
    silence = mel_distance(speech, torch.zeros_like(speech), codec.sample_rate)
    dist = {}
    for bw in (1.5, 12):
        out = codec.decode(codec.encode(speech[None], bandwidth=bw))[0, :, : speech.shape[-1]]
        dist[bw] = mel_distance(speech, out, codec.sample_rate)
    assert dist[12] < dist[1.5] < silence
