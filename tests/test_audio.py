"""Audio I/O: formats, resampling, channel conversion, atomic writes and clear errors."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.audio import load_audio, resample, save_audio
from codeclm.errors import AudioError


def _sine(sr=16000, seconds=0.5, freq=440.0, channels=1):
    t = torch.arange(int(sr * seconds)) / sr
    return torch.stack([0.5 * torch.sin(2 * torch.pi * freq * (c + 1) * t) for c in range(channels)])


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
def test_save_load_roundtrip(tmp_path, ext):
    wav = _sine(channels=2)
    path = save_audio(tmp_path / f"x{ext}", wav, 16000)
    back, sr = load_audio(path)
    assert sr == 16000 and back.shape == wav.shape and back.dtype == torch.float32
    tol = 1e-3 if ext != ".ogg" else 0.2  # lossless vs Vorbis
    assert (back - wav).abs().max() < tol


def test_resample_and_channels(tmp_path):
    wav = _sine(sr=8000, channels=2, freq=200.0)
    save_audio(tmp_path / "a.wav", wav, 8000)
    mono, sr = load_audio(tmp_path / "a.wav", sample_rate=24000, channels=1)
    assert sr == 24000 and mono.shape == (1, 12000)
    ref = resample(wav.mean(0, keepdim=True), 8000, 24000)
    assert torch.allclose(mono, ref, atol=1e-4)
    # a 200 Hz sine keeps its frequency after resampling: peak of the spectrum
    spec = torch.fft.rfft(mono[0]).abs()
    assert abs(int(spec.argmax()) * 24000 / 12000 - 200) <= 2
    stereo, _ = load_audio(tmp_path / "a.wav", channels=2)
    assert stereo.shape[0] == 2
    up, _ = load_audio(save_audio(tmp_path / "m.wav", _sine(), 16000), channels=2)
    assert torch.equal(up[0], up[1])


def test_segment_read(tmp_path):
    wav = torch.arange(16000, dtype=torch.float32)[None] / 16000
    save_audio(tmp_path / "r.wav", wav, 16000, subtype="FLOAT")
    seg, _ = load_audio(tmp_path / "r.wav", start=0.25, duration=0.1)
    assert seg.shape == (1, 1600) and seg[0, 0] == pytest.approx(0.25)


def test_load_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "text.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype="float32"), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nan.wav", np.array([[0.0], [np.nan]], dtype="float32"), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_save_is_atomic_and_validates(tmp_path):
    with pytest.raises(AudioError, match="unknown audio extension"):
        save_audio(tmp_path / "x.xyz", _sine(), 16000)
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "x.wav", torch.tensor([[0.0, float("nan")]]), 16000)
    with pytest.raises(AudioError, match="channels, samples"):
        save_audio(tmp_path / "x.wav", torch.zeros(1, 1, 10), 16000)
    assert os.listdir(tmp_path) == []  # nothing half-written left behind
