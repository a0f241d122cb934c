"""Objective quality metrics comparing a reference waveform with a reconstruction.

Inputs are ``[channels, samples]`` or ``[samples]`` tensors at the same sample rate; the longer
one is trimmed to the shorter (codecs often pad a few samples). Multi-channel scores are the
mean over channels. Everything runs without gradients and returns plain floats.

=========  ==========================================================  ============
name       metric                                                      better
=========  ==========================================================  ============
si_sdr     scale-invariant SDR in dB (Le Roux et al., 2019)            higher
mel        multi-scale log-mel L1 (descript-audio-codec's eval)        lower
stft       multi-scale log-magnitude L1 (windows 2048 and 512)         lower
pesq       wideband PESQ at 16 kHz (``pip install pesq``)              higher, 1-4.6
stoi       short-time objective intelligibility (``pip install pystoi``) higher, 0-1
lines      dB of the strongest spectral line added by the coder        lower
phase      phase-derivative distance (instantaneous frequency + group  lower, 0-4
           delay, magnitude-weighted; ~1.07 for an unrelated phase)
=========  ==========================================================  ============
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from codeclm.audio import resample
from codeclm.errors import AudioError, CodecLMError
from codeclm.spectral import MultiScaleMelLoss, PhaseDerivativeLoss, stft_magnitude

__all__ = ["si_sdr", "mel_distance", "stft_distance", "phase_distance", "pesq_score", "stoi_score", "spectral_lines",
           "evaluate_pair", "METRICS"]


def _pair(ref: torch.Tensor, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 ``[C, T]``, trimmed to the shorter length."""
    ref, est = torch.as_tensor(ref).detach().cpu(), torch.as_tensor(est).detach().cpu()
    ref, est = (ref[None] if ref.dim() == 1 else ref), (est[None] if est.dim() == 1 else est)
    if ref.dim() != 2 or est.dim() != 2 or ref.shape[0] != est.shape[0]:
        raise AudioError(f"reference {tuple(ref.shape)} and estimate {tuple(est.shape)} must both be "
                         "[channels, samples] with the same number of channels")
    n = min(ref.shape[-1], est.shape[-1])
    if n == 0:
        raise AudioError("cannot compare empty audio")
    return ref[:, :n].double(), est[:, :n].double()


@torch.no_grad()
def si_sdr(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-8) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (zero-mean signals).

    ``est`` is projected on ``ref``: ``target = <est, ref> / ||ref||^2 * ref``, and the score is
    ``10 log10(||target||^2 / ||est - target||^2)``; rescaling ``est`` leaves it unchanged.
    """
    ref, est = _pair(ref, est)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    est = est - est.mean(dim=-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    ratio = (target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps)
    return float((10 * torch.log10(ratio)).mean())


@lru_cache(maxsize=8)
def _mel_loss(sample_rate: int) -> MultiScaleMelLoss:
    return MultiScaleMelLoss.dac(sample_rate).eval()


@torch.no_grad()
def mel_distance(ref: torch.Tensor, est: torch.Tensor, sample_rate: int) -> float:
    """descript-audio-codec's mel distance: log10-mel L1 summed over windows 32..2048."""
    ref, est = _pair(ref, est)
    return float(_mel_loss(sample_rate)(est.float(), ref.float()))


@torch.no_grad()
def stft_distance(ref: torch.Tensor, est: torch.Tensor, windows: Sequence[int] = (2048, 512),
                  floor: float = 1e-5) -> float:
    """Log10-magnitude STFT L1 summed over ``windows`` (hop = window / 4), as DAC's eval."""
    ref, est = _pair(ref, est)
    total = 0.0
    for w in windows:
        window = torch.hann_window(w, dtype=torch.float64)
        mr = stft_magnitude(ref, w, w // 4, window).clamp(min=floor).log10()
        me = stft_magnitude(est, w, w // 4, window).clamp(min=floor).log10()
        total += float((mr - me).abs().mean())
    return total


@torch.no_grad()
def phase_distance(ref: torch.Tensor, est: torch.Tensor, windows: Sequence[int] = (512, 1024)) -> float:
    """:class:`~codeclm.spectral.PhaseDerivativeLoss` of ``est`` against ``ref``: whether partials
    keep the reference's phase advance and phase steps between bins (under 0.03 for the same signal,
    about 1.07 for the same magnitudes with a noise phase, i.e. whisper). A codec whose decoder rebuilds
    envelopes but not harmonics scores ~1.1 whatever its mel distance; Opus at 6 kbps ~0.3."""
    ref, est = _pair(ref, est)
    return float(PhaseDerivativeLoss(windows)(est.float(), ref.float()))


def _ltas_db(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Long-term average power spectrum in dB of ``x`` ``[C, T]`` (channels averaged): ``[n_fft // 2 + 1]``."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    if x.shape[-1] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    power = torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs().pow(2).mean(dim=(0, -1))
    return 10 * torch.log10(power + 1e-20)


def _above_local_median(db: torch.Tensor, half: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(db[None, None], (half, half), mode="replicate")[0, 0]
    return db - padded.unfold(0, 2 * half + 1, 1).median(dim=-1).values


@torch.no_grad()
def spectral_lines(ref: torch.Tensor, est: torch.Tensor, sample_rate: int, n_fft: int = 4096,
                   band_hz: float = 150.0, min_hz: float = 50.0, return_frequency: bool = False):
    """Tonal artifacts: how far (dB) the strongest spectral line of ``est`` that ``ref`` lacks
    stands above its neighbourhood.

    Both long-term spectra (Welch, ``n_fft`` Hann windows) are taken relative to their running
    median over +-``band_hz``; a line of the input (a held pitch, a hum it already had) is
    subtracted where it is, so only peaks the coder *added* count. White noise or speech through
    Opus scores 1-8 dB; a decoder whose upsampling leaves a periodic pattern (lines at multiples
    of its first stage's rate) scores 20-30 dB. With ``return_frequency`` also the line's Hz.
    """
    ref, est = _pair(ref, est)
    half = max(2, int(round(band_hz * n_fft / sample_rate)))
    added = _above_local_median(_ltas_db(est, n_fft), half) - _above_local_median(_ltas_db(ref, n_fft), half).clamp(min=0)
    first = int(min_hz * n_fft / sample_rate)
    k = int(added[first:].argmax()) + first
    score = float(added[k])
    return (score, k * sample_rate / n_fft) if return_frequency else score


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise CodecLMError(f"this metric needs the {module!r} package: pip install {module} "
                           "(or pip install 'codeclm[eval]')") from None


@torch.no_grad()
def pesq_score(ref: torch.Tensor, est: torch.Tensor, sample_rate: int) -> float:
    """Wideband PESQ (ITU-T P.862.2) after resampling both signals to 16 kHz."""
    pesq = _require("pesq")
    ref, est = _pair(ref, est)
    ref, est = resample(ref, sample_rate, 16000).numpy(), resample(est, sample_rate, 16000).numpy()
    try:
        scores = [pesq.pesq(16000, r, e, "wb") for r, e in zip(ref, est)]
    except Exception as exc:  # pesq raises its own error types, e.g. when it finds no speech
        raise CodecLMError(f"PESQ failed: {exc}") from None
    return float(np.mean(scores))


@torch.no_grad()
def stoi_score(ref: torch.Tensor, est: torch.Tensor, sample_rate: int, extended: bool = False) -> float:
    """STOI (or extended STOI) from ``pystoi``, which resamples to 10 kHz itself."""
    pystoi = _require("pystoi")
    ref, est = _pair(ref, est)
    scores = [pystoi.stoi(r, e, sample_rate, extended=extended) for r, e in zip(ref.numpy(), est.numpy())]
    return float(np.mean(scores))


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], float]] = {
    "si_sdr": lambda ref, est, sr: si_sdr(ref, est),
    "mel": mel_distance,
    "stft": lambda ref, est, sr: stft_distance(ref, est),
    "pesq": pesq_score,
    "stoi": stoi_score,
    "lines": spectral_lines,
    "phase": lambda ref, est, sr: phase_distance(ref, est),
}


def evaluate_pair(
    ref: torch.Tensor, est: torch.Tensor, sample_rate: int, metrics: Sequence[str] = ("si_sdr", "mel", "stft")
) -> dict[str, float]:
    """Compute the named ``metrics`` (keys of :data:`METRICS`) for one reference/estimate pair."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CodecLMError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    return {name: METRICS[name](ref, est, sample_rate) for name in metrics}
