"""Reconstruction and adversarial losses for codec training (EnCodec / descript-audio-codec style).

Waveforms are ``[..., samples]`` tensors (usually ``[batch, channels, samples]``); every
spectral loss flattens the leading dimensions and returns a scalar.

Reconstruction (defined in :mod:`codeclm.spectral`, shared with :mod:`codeclm.metrics`; re-exported here)
    :class:`MelSpectrogram`          log/linear mel spectrogram with the filterbank as a buffer.
    :class:`MultiScaleMelLoss`       sum over window sizes of mel-spectrogram distances
                                     (presets :meth:`~MultiScaleMelLoss.encodec` and
                                     :meth:`~MultiScaleMelLoss.dac`).
    :class:`MultiResolutionSTFTLoss` spectral convergence + log-magnitude L1 (Parallel WaveGAN).

    :class:`PhaseDerivativeLoss`     wrap-free errors of the phase's time and frequency derivatives.

Adversarial (lists with one entry per sub-discriminator)
    :func:`hinge_discriminator_loss`, :func:`hinge_generator_loss`, :func:`feature_matching_loss`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from codeclm.spectral import MelSpectrogram, MultiResolutionSTFTLoss, MultiScaleMelLoss, PhaseDerivativeLoss, stft_magnitude

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

