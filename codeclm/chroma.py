"""Chroma features: a clip's dominant pitch class per frame (the melody of MusicGen-melody).

    idx = chroma_indices(wav, sample_rate=24000, hop_length=480)     # [B, T] in 0..12 (12: silent)

The chromagram folds an STFT power spectrum (55 Hz .. 4.2 kHz) onto the 12 pitch classes
(C = 0, ..., B = 11) with a triangular weight around each semitone. As in MusicGen-melody, only
the dominant pitch class of each frame is kept (``argmax``): the melody/harmony line, without
the timbre, so a model cannot copy the reference's sound. Frames quieter than
``silence_db`` below the clip's loudest frame get index 12 (no pitch). One chroma frame per
codec frame (``hop_length`` samples), so the melody lines up with the generated codes.

This is feature extraction only, below the data, LM and evaluation layers that all use it (token
caches store it, the melody conditioner embeds it, music evaluation compares it);
:mod:`codeclm.lm.melody` holds the conditioner and re-exports these names.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from codeclm.errors import CodecLMError

__all__ = ["N_CHROMA", "SILENT", "F_MIN", "F_MAX", "chroma_filterbank", "chroma_indices"]

N_CHROMA = 12
SILENT = 12  # index of a frame with no pitch
F_MIN, F_MAX = 55.0, 4200.0


def chroma_filterbank(sample_rate: int, n_fft: int) -> torch.Tensor:
    """``[12, n_fft // 2 + 1]``: weight of each FFT bin for each pitch class (C = 0).

    A bin at frequency f sits at MIDI pitch ``p = 69 + 12 log2(f / 440)``; it counts for pitch
    class c with weight ``max(0, 1 - d)``, d the circular distance in semitones between p and c.
    Bins outside [55 Hz, 4.2 kHz] get no weight.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    valid = (freqs >= F_MIN) & (freqs <= F_MAX)
    pitch = 69.0 + 12.0 * torch.log2(freqs.clamp(min=1e-6) / 440.0)
    classes = torch.arange(N_CHROMA, dtype=torch.float64)[:, None]
    d = torch.remainder(pitch[None, :] - classes, 12.0)
    d = torch.minimum(d, 12.0 - d)
    fb = (1.0 - d).clamp(min=0.0) * valid[None, :]
    return fb.float()


def chroma_indices(wav: torch.Tensor, sample_rate: int, hop_length: int, n_frames: int | None = None,
                   n_fft: int | None = None, silence_db: float = 40.0) -> torch.Tensor:
    """Dominant pitch class per frame: ``wav [B, C, N]`` (or ``[C, N]``, ``[N]``) -> ``[B, T]`` long.

    Frame t is centred on sample ``(t + 0.5) * hop_length``; ``T = ceil(N / hop_length)`` (a
    codec's frame count) unless ``n_frames`` is given (extra frames are silent). Channels are
    averaged. ``n_fft`` defaults to the power of two covering >= 300 ms (8192 at 24 kHz: 2.9 Hz
    bins, fine enough to tell semitones apart at 55 Hz; MusicGen's chroma uses a long window too).
    """
    if not torch.is_tensor(wav) or not wav.is_floating_point():
        raise CodecLMError("melody audio must be a float tensor")
    if wav.dim() == 1:
        wav = wav[None, None]
    elif wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3 or wav.shape[-1] == 0:
        raise CodecLMError(f"melody audio must be [B, C, N] with N > 0, got {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise CodecLMError("melody audio contains NaN or infinite samples")
    x = wav.float().mean(dim=1)  # [B, N]
    B, N = x.shape
    T = math.ceil(N / hop_length)
    n_fft = n_fft or 2 ** math.ceil(math.log2(0.3 * sample_rate))
    # pad so that frame t's window is centred on (t + 0.5) * hop
    left = n_fft // 2 - hop_length // 2
    total = (T - 1) * hop_length + n_fft
    x = nn.functional.pad(x, (max(left, 0), max(total - N - left, 0)))
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop_length, window=window, center=False, return_complex=True)[..., :T]
    power = spec.abs().pow(2)  # [B, F, T]
    chroma = torch.einsum("cf,bft->bct", chroma_filterbank(sample_rate, n_fft).to(x.device), power)
    idx = chroma.argmax(dim=1)  # [B, T]
    energy = chroma.sum(dim=1)
    floor = energy.amax(dim=1, keepdim=True) * 10 ** (-silence_db / 10)
    idx = torch.where((energy > floor) & (energy > 1e-10), idx, torch.full_like(idx, SILENT))
    if n_frames is not None:
        if n_frames > T:
            idx = torch.cat([idx, idx.new_full((B, n_frames - T), SILENT)], dim=1)
        idx = idx[:, :n_frames]
    return idx
