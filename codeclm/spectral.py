"""Spectral transforms and distances shared by training losses and evaluation metrics.

Waveforms are ``[..., samples]`` tensors (usually ``[batch, channels, samples]``); every distance
flattens the leading dimensions and returns a scalar. This module sits at the bottom of the
package (it imports no codeclm module), so that :mod:`codeclm.metrics` (evaluation) and
:mod:`codeclm.training.losses` (training) share one implementation without importing each other.

:func:`stft_magnitude`            ``|STFT|`` with centred frames (reflect, or zero padding for short clips).
:class:`MelSpectrogram`           log/linear mel spectrogram with the filterbank as a buffer.
:class:`MultiScaleMelLoss`        sum over window sizes of mel-spectrogram distances (presets
                                  :meth:`~MultiScaleMelLoss.encodec` and :meth:`~MultiScaleMelLoss.dac`,
                                  the latter also the ``mel`` metric).
:class:`MultiResolutionSTFTLoss`  spectral convergence + log-magnitude L1 (Parallel WaveGAN).
:class:`PhaseDerivativeLoss`      magnitude-weighted, wrap-free errors of the phase's time and frequency
                                  derivatives (instantaneous frequency, group delay): what a
                                  magnitude loss cannot see (the ``phase`` metric, a training loss).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.audio_utils import mel_filter_bank

__all__ = ["stft_magnitude", "MelSpectrogram", "MultiScaleMelLoss", "MultiResolutionSTFTLoss", "PhaseDerivativeLoss"]


def stft_magnitude(
    x: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor, power: float = 1.0
) -> torch.Tensor:
    """``|STFT(x)| ** power`` of ``[..., T]`` as ``[..., n_fft // 2 + 1, frames]`` (centred frames).

    Frames are centred with reflect padding, or zero padding when the signal is shorter than half
    a window (reflect padding needs more samples than it pads).
    """
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    pad_mode = "reflect" if shape[-1] > n_fft // 2 else "constant"
    spec = torch.stft(flat, n_fft, hop_length=hop_length, win_length=window.numel(), window=window,
                      center=True, pad_mode=pad_mode, return_complex=True)
    mag = spec.abs()
    if power != 1.0:
        mag = mag.pow(power)
    return mag.reshape(*shape[:-1], *mag.shape[-2:])


class MelSpectrogram(nn.Module):
    """Mel spectrogram of ``[..., T]`` waveforms -> ``[..., n_mels, frames]``.

    ``power`` 1 gives a magnitude, 2 a power spectrogram. With ``log=True`` the output is
    ``log10(clamp(mel, floor))``. The triangular filterbank comes from
    :func:`transformers.audio_utils.mel_filter_bank` (``mel_scale="htk"`` without area norm matches
    torchaudio's default; ``"slaney"`` with ``norm="slaney"`` matches librosa) and is stored as a
    non-persistent buffer, so it follows ``.to(device)`` but never enters a checkpoint.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int = 1024,
        hop_length: int | None = None,
        win_length: int | None = None,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        power: float = 1.0,
        log: bool = True,
        floor: float = 1e-5,
        mel_scale: str = "htk",
        norm: str | None = None,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length or n_fft // 4
        self.power = power
        self.log = log
        self.floor = floor
        f_max = sample_rate / 2 if f_max is None else f_max
        with warnings.catch_warnings():
            # Small windows with many mels leave some filters empty (EnCodec's n_fft=32, 64 mels);
            # those bands are constant and simply add nothing to a distance.
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            fb = mel_filter_bank(n_fft // 2 + 1, n_mels, f_min, f_max, sample_rate, norm=norm,
                                 mel_scale=mel_scale, triangularize_in_mel_space=True)
        self.register_buffer("filterbank", torch.from_numpy(fb.T).float(), persistent=False)  # [mels, freqs]
        self.register_buffer("window", torch.hann_window(win_length or n_fft), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = stft_magnitude(x.float(), self.n_fft, self.hop_length, self.window, self.power)
        mel = torch.matmul(self.filterbank, spec)
        return torch.log10(mel.clamp(min=self.floor)) if self.log else mel


class MultiScaleMelLoss(nn.Module):
    """Mel-spectrogram distance summed over window sizes (hop = window / 4).

    For each window ``w`` with mel transform ``S_w``::

        loss = sum_w  mag_weight     * L1 (S_w(x),        S_w(y))
                    + log_weight     * L1 (log10 S_w(x),  log10 S_w(y))
                    + log_mse_weight * MSE(log10 S_w(x),  log10 S_w(y))

    where L1/MSE are means over all elements and ``log10`` clamps at ``floor``. Two presets:

    * :meth:`dac` (the default arguments): log-mel L1 only, windows 32..2048 with 5..320 mels,
      magnitude mels, slaney filters (descript-audio-codec's ``MelSpectrogramLoss``).
    * :meth:`encodec`: linear-mel L1 + log-mel MSE, windows 2^5..2^11, 64 mels (EnCodec's
      reconstruction loss L_f as implemented in audiocraft with alphas=False).
    """

    def __init__(
        self,
        sample_rate: int,
        windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: int | Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        f_min: float = 0.0,
        f_max: float | None = None,
        power: float = 1.0,
        floor: float = 1e-5,
        mag_weight: float = 0.0,
        log_weight: float = 1.0,
        log_mse_weight: float = 0.0,
        mel_scale: str = "slaney",
        norm: str | None = "slaney",
    ):
        super().__init__()
        n_mels = [n_mels] * len(windows) if isinstance(n_mels, int) else list(n_mels)
        if len(n_mels) != len(windows):
            raise ValueError(f"got {len(windows)} windows but {len(n_mels)} mel sizes")
        self.mag_weight, self.log_weight, self.log_mse_weight = mag_weight, log_weight, log_mse_weight
        self.mels = nn.ModuleList(
            MelSpectrogram(sample_rate, n_fft=w, hop_length=w // 4, n_mels=m, f_min=f_min, f_max=f_max,
                           power=power, log=False, floor=floor, mel_scale=mel_scale, norm=norm)
            for w, m in zip(windows, n_mels)
        )

    @classmethod
    def dac(cls, sample_rate: int) -> "MultiScaleMelLoss":
        """descript-audio-codec's multi-scale log-mel L1 (also its ``mel`` evaluation metric)."""
        return cls(sample_rate)

    @classmethod
    def encodec(cls, sample_rate: int, n_mels: int = 64) -> "MultiScaleMelLoss":
        """EnCodec's L_f: linear-mel L1 + log-mel MSE over windows 2^5..2^11 (torchaudio filters)."""
        return cls(sample_rate, windows=[2**i for i in range(5, 12)], n_mels=n_mels, mag_weight=1.0,
                   log_weight=0.0, log_mse_weight=1.0, mel_scale="htk", norm=None)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between estimate ``x`` and target ``y`` (same shape ``[..., T]``)."""
        if x.shape != y.shape:
            raise ValueError(f"estimate {tuple(x.shape)} and target {tuple(y.shape)} differ in shape")
        loss = x.new_zeros((), dtype=torch.float32)
        for mel in self.mels:
            mx, my = mel(x), mel(y)
            if self.mag_weight:
                loss = loss + self.mag_weight * F.l1_loss(mx, my)
            if self.log_weight or self.log_mse_weight:
                lx, ly = torch.log10(mx.clamp(min=mel.floor)), torch.log10(my.clamp(min=mel.floor))
                if self.log_weight:
                    loss = loss + self.log_weight * F.l1_loss(lx, ly)
                if self.log_mse_weight:
                    loss = loss + self.log_mse_weight * F.mse_loss(lx, ly)
        return loss


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions (hop = window / 4).

    Per resolution: ``|| |Y| - |X| ||_F / || |Y| ||_F + mean |log |Y| - log |X||`` with magnitudes
    clamped at ``floor`` (Yamamoto et al., Parallel WaveGAN).
    """

    def __init__(self, windows: Sequence[int] = (512, 1024, 2048), floor: float = 1e-5,
                 sc_weight: float = 1.0, log_mag_weight: float = 1.0):
        super().__init__()
        self.windows = list(windows)
        self.floor, self.sc_weight, self.log_mag_weight = floor, sc_weight, log_mag_weight
        for w in self.windows:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between estimate ``x`` and target ``y`` (same shape ``[..., T]``)."""
        if x.shape != y.shape:
            raise ValueError(f"estimate {tuple(x.shape)} and target {tuple(y.shape)} differ in shape")
        loss = x.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            window = getattr(self, f"window_{w}")
            mx = stft_magnitude(x.float(), w, w // 4, window).clamp(min=self.floor)
            my = stft_magnitude(y.float(), w, w // 4, window).clamp(min=self.floor)
            sc = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(my)
            log_mag = F.l1_loss(torch.log(mx), torch.log(my))
            loss = loss + self.sc_weight * sc + self.log_mag_weight * log_mag
        return loss / len(self.windows)


class PhaseDerivativeLoss(nn.Module):
    """What the magnitude losses cannot see: whether partials keep a coherent phase.

    A mel or magnitude loss gives the same value to a voiced sound and to its spectral envelope
    excited by noise (whisper); a decoder that predicts each frame's phase on its own (an
    inverse-STFT head) learns the envelope and not the harmonics. APNet (Ai and Ling, 2023)
    trains such heads with anti-wrapping losses on the phase's derivatives; this is the same
    idea on the output waveform, so it works for any decoder and under the loss balancer:

    * instantaneous frequency: ``d_t = S[k, t] conj(S[k, t - 1])`` (the phase advance over a hop),
    * group delay: ``d_f = S[k, t] conj(S[k - 1, t])`` (the phase step between bins),

    and per derivative ``sum w (1 - cos(angle(d_est) - angle(d_target))) / sum w`` with
    ``w = sqrt |d_target|`` (the bins where the target has energy), the cosine computed as
    ``Re(d_est conj(d_target)) / (|d_est| |d_target| + eps)`` (no ``atan2``, no wrapping; ``eps`` is
    ``(1e-3 mean |d_target|)^2``, so near-silent bins weigh little and nothing divides by zero). A constant phase offset or a small common delay changes
    neither the instantaneous frequency nor (beyond a linear ramp) the group delay much; a noise
    excitation changes both completely (tests/test_losses.py). Each term is in [0, 2] (1 for an
    unrelated phase); the loss is their weighted sum averaged over STFT resolutions (Hann
    windows, hop = window / 4).
    """

    def __init__(self, windows: Sequence[int] = (512, 1024), if_weight: float = 1.0, gd_weight: float = 1.0):
        super().__init__()
        if not windows:
            raise ValueError("PhaseDerivativeLoss needs at least one STFT window")
        self.windows = list(windows)
        self.if_weight, self.gd_weight = if_weight, gd_weight
        for w in self.windows:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)

    @staticmethod
    def _term(d_est: torch.Tensor, d_ref: torch.Tensor) -> torch.Tensor:
        mag_ref = d_ref.abs()
        eps = (1e-3 * mag_ref.mean()).square().clamp(min=1e-24)
        cos = (d_est * d_ref.conj()).real / (d_est.abs() * mag_ref + eps)
        w = mag_ref.sqrt()
        return (w * (1 - cos)).sum() / w.sum().clamp(min=1e-12)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance of estimate ``x`` from target ``y`` (same shape ``[..., T]``)."""
        if x.shape != y.shape:
            raise ValueError(f"estimate {tuple(x.shape)} and target {tuple(y.shape)} differ in shape")
        flat_x, flat_y = x.float().reshape(-1, x.shape[-1]), y.float().reshape(-1, y.shape[-1])
        loss = flat_x.new_zeros(())
        for w in self.windows:
            window = getattr(self, f"window_{w}")
            pad_mode = "reflect" if x.shape[-1] > w // 2 else "constant"
            sx, sy = (torch.stft(z, w, hop_length=w // 4, window=window, center=True, pad_mode=pad_mode,
                                 return_complex=True) for z in (flat_x, flat_y))  # [N, bins, frames]
            if self.if_weight:
                loss = loss + self.if_weight * self._term(sx[..., 1:] * sx[..., :-1].conj(),
                                                          sy[..., 1:] * sy[..., :-1].conj())
            if self.gd_weight:
                loss = loss + self.gd_weight * self._term(sx[:, 1:] * sx[:, :-1].conj(),
                                                          sy[:, 1:] * sy[:, :-1].conj())
        return loss / len(self.windows)
