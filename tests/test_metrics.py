"""Evaluation metrics and the Opus baseline, checked against known values."""

import math

import pytest
import torch

import codeclm.baselines as baselines
from codeclm.errors import AudioError, CodecLMError
from codeclm.metrics import evaluate_pair, mel_distance, pesq_score, phase_distance, si_sdr, stft_distance, stoi_score

SR = 16000


def speech_like(seconds: float = 2.0, sr: int = SR, pauses: bool = True) -> torch.Tensor:
    """``[1, T]`` voiced 'syllables': harmonics of a wobbling 140 Hz pitch shaped by three formants.

    With ``pauses`` every other quarter second is silent; without, the loudness only wobbles.
    """
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    f0 = 140 * (1 + 0.15 * torch.sin(2 * math.pi * 0.7 * t))
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    x = torch.zeros_like(t)
    for k in range(1, 40):
        f = k * 140
        gain = (math.exp(-(((f - 500) / 200) ** 2)) + 0.6 * math.exp(-(((f - 1500) / 300) ** 2))
                + 0.3 * math.exp(-(((f - 2500) / 400) ** 2)) + 0.02)
        x += gain * torch.sin(k * phase)
    wobble = torch.sin(2 * math.pi * 2 * t)
    envelope = wobble.clamp(min=0).sqrt() if pauses else 0.7 + 0.3 * wobble
    return (0.3 * x / x.abs().max() * envelope)[None].float()


def with_noise(x: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    noise *= (x.pow(2).mean() / noise.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()
    return x + noise


# ----------------------------------------------------------------------------- SI-SDR


def test_si_sdr_known_cases():
    x = speech_like(1.0)
    assert si_sdr(x, x) > 80
    noisy = with_noise(x, 10.0)
    assert si_sdr(x, noisy) == pytest.approx(10.0, abs=0.5)
    assert si_sdr(x, with_noise(x, 0.0)) == pytest.approx(0.0, abs=0.5)
    # scale-invariant: rescaling the estimate (even by a negative gain) changes nothing
    assert si_sdr(x, 3.0 * noisy) == pytest.approx(si_sdr(x, noisy), abs=1e-6)
    assert si_sdr(x, -0.1 * noisy) == pytest.approx(si_sdr(x, noisy), abs=1e-5)
    # zero-mean: a DC offset is ignored
    assert si_sdr(x, noisy + 0.5) == pytest.approx(si_sdr(x, noisy), abs=1e-6)


def test_si_sdr_shapes_lengths_and_channels():
    x = speech_like(0.5)
    noisy = with_noise(x, 10.0)
    assert si_sdr(x[0], noisy[0]) == pytest.approx(si_sdr(x, noisy))
    # a longer estimate is trimmed to the reference
    padded = torch.cat([noisy, torch.randn(1, 100)], dim=-1)
    assert si_sdr(x, padded) == pytest.approx(si_sdr(x, noisy))
    # stereo: mean over channels
    stereo_ref, stereo_est = torch.cat([x, x]), torch.cat([noisy, with_noise(x, 20.0, seed=1)])
    assert si_sdr(stereo_ref, stereo_est) == pytest.approx((si_sdr(x, noisy) + si_sdr(x, stereo_est[1:])) / 2)
    with pytest.raises(AudioError):
        si_sdr(stereo_ref, noisy)


# ----------------------------------------------------------------------------- spectral distances


@pytest.mark.parametrize("distance", [lambda r, e: mel_distance(r, e, SR), stft_distance])
def test_spectral_distances(distance):
    x = speech_like(0.5)
    assert distance(x, x) == pytest.approx(0.0, abs=1e-6)
    values = [distance(x, with_noise(x, snr)) for snr in (30, 20, 10, 0)]
    assert all(a < b for a, b in zip(values, values[1:]))


# ----------------------------------------------------------------------------- PESQ / STOI


def test_pesq_clean_vs_noisy():
    pytest.importorskip("pesq")
    x = speech_like(2.0, sr=24000)  # resampled to 16 kHz inside
    clean, noisy = pesq_score(x, x, 24000), pesq_score(x, with_noise(x, 10.0), 24000)
    assert clean > 4.4 and 1.0 <= noisy < clean - 2


def test_stoi_clean_vs_noisy():
    pytest.importorskip("pystoi")
    x = speech_like(2.0)
    assert stoi_score(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert stoi_score(x, with_noise(x, 20.0), SR) > stoi_score(x, with_noise(x, 0.0), SR)


def test_evaluate_pair():
    x = speech_like(1.0)
    scores = evaluate_pair(x, with_noise(x, 10.0), SR)
    assert set(scores) == {"si_sdr", "mel", "stft"} and all(isinstance(v, float) for v in scores.values())
    assert scores["si_sdr"] == pytest.approx(10.0, abs=0.5)
    with pytest.raises(CodecLMError, match="unknown metric"):
        evaluate_pair(x, x, SR, metrics=("si_sdr", "bleu"))


# ----------------------------------------------------------------------------- Opus baseline

needs_opus = pytest.mark.skipif(not baselines.opus_available(), reason="ffmpeg with libopus not installed")


@needs_opus
def test_opus_roundtrip_quality_bitrate_and_alignment():
    x = speech_like(2.0, pauses=False)  # VBR spends fewer bits on silence, so no pauses here
    high, high_kbps = baselines.opus_roundtrip(x, SR, 64)
    low, low_kbps = baselines.opus_roundtrip(x, SR, 6)
    assert high.shape == low.shape == x.shape
    assert high_kbps == pytest.approx(64, rel=0.3) and low_kbps == pytest.approx(6, rel=0.3)
    high_sdr, low_sdr = si_sdr(x, high), si_sdr(x, low)
    assert high_sdr > 10 and low_sdr < high_sdr - 3
    # aligned: shifting the decoded signal by a single sample makes it worse
    assert si_sdr(x[:, 1:], high[:, :-1]) < high_sdr - 3


@needs_opus
def test_phase_distance_separates_opus_from_a_whispered_rendition():
    """The ``phase`` metric: ~0 for the signal itself, low for Opus at 6 kbps (a coder that keeps
    the harmonics), ~1 for the same STFT magnitudes with a noise phase (the whisper a decoder
    trained on magnitudes alone produces), whatever the mel distance says."""
    x = speech_like(2.0, pauses=False)
    window = torch.hann_window(512, dtype=torch.float64)
    spec = torch.stft(x, 512, 128, window=window, return_complex=True)
    noise_phase = 2 * math.pi * torch.rand(spec.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whisper = torch.istft(spec.abs() * torch.exp(1j * noise_phase), 512, 128, window=window, length=x.shape[-1])
    opus, _ = baselines.opus_roundtrip(x, SR, 6)
    assert phase_distance(x, x) < 0.03  # near-silent bins (weighted by sqrt |d|) keep it off exact 0
    assert phase_distance(x, opus) < 0.5 < 0.9 < phase_distance(x, whisper) < 1.2
    assert evaluate_pair(x, whisper, SR, ("phase",))["phase"] == pytest.approx(phase_distance(x, whisper))

@needs_opus
def test_opus_roundtrip_stereo_and_1d():
    x = speech_like(1.0, sr=24000)
    stereo = torch.cat([x, 0.5 * x])
    out, _ = baselines.opus_roundtrip(stereo, 24000, 96)
    assert out.shape == stereo.shape and si_sdr(stereo, out) > 10
    mono, _ = baselines.opus_roundtrip(x[0], 24000, 32)
    assert mono.shape == x[0].shape


def test_opus_errors(monkeypatch):
    with pytest.raises(AudioError, match="mono or stereo"):
        baselines.opus_roundtrip(torch.zeros(3, 1000), SR, 32)
    with pytest.raises(CodecLMError, match="bitrate"):
        baselines.opus_roundtrip(torch.zeros(1, 1000), SR, 0.1)
    monkeypatch.setattr(baselines, "opus_available", lambda: False)
    with pytest.raises(CodecLMError, match="ffmpeg"):
        baselines.opus_roundtrip(speech_like(0.1), SR, 32)
