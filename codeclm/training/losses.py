"""Reconstruction and adversarial losses for codec training (EnCodec / descript-audio-codec style).

Waveforms are ``[..., samples]`` tensors (usually ``[batch, channels, samples]``); every
spectral loss flattens the leading dimensions and returns a scalar.

Reconstruction (defined in :mod:`codeclm.spectral`, shared with :mod:`codeclm.metrics`; re-exported here)
    :class:`MelSpectrogram`          log/linear mel spectrogram with the filterbank as a buffer.
    :class:`MultiScaleMelLoss`       sum over window sizes of mel-spectrogram distances
                                     (presets :meth:`~MultiScaleMelLoss.encodec` and
                                     :meth:`~MultiScaleMelLoss.dac`).
    :class:`MultiResolutionSTFTLoss` spectral convergence + log-magnitude L1 (Parallel WaveGAN).

Phase
    :class:`PhaseDerivativeLoss`     magnitude-weighted, wrap-free errors of the phase's time and
                                     frequency derivatives (instantaneous frequency, group delay).

Adversarial (lists with one entry per sub-discriminator)
    :func:`hinge_discriminator_loss`, :func:`hinge_generator_loss`, :func:`feature_matching_loss`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.spectral import MelSpectrogram, MultiResolutionSTFTLoss, MultiScaleMelLoss, stft_magnitude

__all__ = [
    "stft_magnitude",
    "MelSpectrogram",
    "MultiScaleMelLoss",
    "MultiResolutionSTFTLoss",
    "PhaseDerivativeLoss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "feature_matching_loss",
]


def _as_list(logits: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def hinge_discriminator_loss(
    real_logits: torch.Tensor | Sequence[torch.Tensor], fake_logits: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """``mean_k [ mean relu(1 - D_k(x)) + mean relu(1 + D_k(G(z))) ]`` over sub-discriminators k.

    Pass logits computed on ``fake.detach()`` so that only the discriminator receives gradients.
    """
    real, fake = _as_list(real_logits), _as_list(fake_logits)
    if len(real) != len(fake) or not real:
        raise ValueError(f"need as many real as fake logits (got {len(real)} and {len(fake)})")
    losses = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(losses).mean()


def hinge_generator_loss(fake_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean_k [ mean relu(1 - D_k(G(z))) ]``, the generator side of the hinge game.

    This is EnCodec's generator loss: it stops pushing once the fake logits pass 1.
    """
    fake = _as_list(fake_logits)
    if not fake:
        raise ValueError("need at least one sub-discriminator's logits")
    return torch.stack([F.relu(1 - f).mean() for f in fake]).mean()


def feature_matching_loss(
    real_feats: Sequence[Sequence[torch.Tensor]], fake_feats: Sequence[Sequence[torch.Tensor]], eps: float = 1e-8
) -> torch.Tensor:
    """EnCodec's relative feature matching loss.

    ``real_feats[k][l]`` is layer ``l`` of sub-discriminator ``k`` on real audio. The loss is
    ``1/(K L) * sum_{k,l} mean|D_k^l(x) - D_k^l(G(z))| / mean|D_k^l(x)|``; the real features are
    treated as constant targets.
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError("need features from the same sub-discriminators "
                         f"(got {len(real_feats)} and {len(fake_feats)})")
    terms = []
    for real_layers, fake_layers in zip(real_feats, fake_feats):
        if len(real_layers) != len(fake_layers):
            raise ValueError(f"sub-discriminator gave {len(real_layers)} real but "
                             f"{len(fake_layers)} fake feature maps")
        for real, fake in zip(real_layers, fake_layers):
            real = real.detach()
            terms.append(F.l1_loss(fake, real) / (real.abs().mean() + eps))
    return torch.stack(terms).mean()


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
