"""Codec quality checks: the tonal-artifact metric, the intelligibility evaluation, the shipped codec."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from codeclm.audio import load_audio
from codeclm.codec import Codec, CodecConfig, load_model
from codeclm.errors import CodecLMError
from codeclm.evaluation.intelligibility import SpokenItem, evaluate_intelligibility, unseen_voice_sentences
from codeclm.metrics import spectral_lines

SR = 24_000


def _noise(seconds: float = 4.0, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(1, int(SR * seconds), generator=torch.Generator().manual_seed(seed))


def test_lines_finds_an_added_tone_and_its_frequency():
    x = _noise()
    t = torch.arange(x.shape[-1]) / SR
    y = x + 0.03 * torch.sin(2 * math.pi * 4400 * t)  # 13 dB below the noise's power, but a line
    score, hz = spectral_lines(x, y, SR, return_frequency=True)
    assert score > 15 and abs(hz - 4400) < 10
    assert spectral_lines(x, x + 0.03 * _noise(seed=1), SR) < 6  # more noise adds no line


def test_lines_ignore_what_the_input_already_has():
    t = torch.arange(4 * SR) / SR
    hum = 0.3 * torch.sin(2 * math.pi * 1000 * t)[None] + _noise()
    assert spectral_lines(hum, hum.clone(), SR) < 3
    periodic = hum + 0.02 * torch.sign(torch.sin(2 * math.pi * 400 * t))[None]  # a buzz: lines at 400 Hz * odd k
    assert spectral_lines(hum, periodic, SR) > 15


def test_lines_check_their_input():
    with pytest.raises(CodecLMError):
        spectral_lines(torch.zeros(1, 0), torch.zeros(1, 0), SR)


def _tiny_codec() -> Codec:
    torch.manual_seed(0)
    return Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, lstm_layers=0,
                             target_bandwidths=[4.5, 9.0], kmeans_init=False)).eval()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_intelligibility_scores_originals_codec_and_opus():
    items = unseen_voice_sentences(2, voices=(("espeak-ng", "en-029"),), sample_rate=SR)
    assert len(items) == 2 and items[0].text != items[1].text and items[0].wav.shape[0] == 1
    result = evaluate_intelligibility(_tiny_codec(), items, bandwidths=[4.5], opus_kbps=[12.0])
    assert result["utterances"] == 2 and result["voices"] == ["espeak-ng:en-029"]
    assert 0 <= result["original_wer"] < 0.9, result  # the restricted grammar recognises most espeak words
    assert result["codec"]["4.5"] > result["original_wer"] + 0.1, result  # a random codec destroys the words
    if result["opus"] is not None:
        assert result["opus"]["12"] <= result["original_wer"] + 0.3  # Opus 12 kbps keeps most of them
    again = evaluate_intelligibility(_tiny_codec(), items, bandwidths=[4.5], opus_kbps=[])
    assert again["codec"] == result["codec"]  # deterministic


def test_intelligibility_refuses_wrong_rate():
    item = SpokenItem(torch.zeros(1, 16000), 16000, "hello", "x")
    with pytest.raises(CodecLMError, match="16000 Hz"):
        evaluate_intelligibility(_tiny_codec(), [item])


def test_shipped_codec_adds_no_tonal_lines():
    # the 2026-12-07 decoder (noise_phase + STFT loss): ~7 dB on noise and ~4 dB on speech (Opus 2-3 dB);
    # its predecessor added a 31-33 dB line at 11.15 kHz to white noise
    codec = load_model()
    speech, _ = load_audio("examples/speech.wav", codec.sample_rate, 1)
    for x in (_noise(6.0), speech):
        with torch.inference_mode():
            y = codec.decode(codec.encode(x[None], bandwidth=6.0))[0, :, : x.shape[-1]]
        assert spectral_lines(x, y, codec.sample_rate) < 10.0
