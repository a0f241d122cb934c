"""The codec adversaries: EnCodec's multi-scale STFT discriminator (Défossez et al., 2022) and
HiFi-GAN's multi-period discriminator (Kong et al., 2020), alone or together.

Each sub-discriminator looks at the complex STFT of the waveform at one resolution, with the
real and imaginary parts of every audio channel stacked as input channels of a small 2-D CNN:
a first conv, then convs dilated 1, 2, 4 in time and strided 2 in frequency, a last conv and a
1-channel output conv, all weight-normalised, LeakyReLU(0.2) between them. Layers work on
``[batch, channels, frames, freqs]``.

The period sub-discriminator folds the waveform into ``[batch, channels, samples / p, p]`` and runs
2-D convs with ``(k, 1)`` kernels, so each one sees every p-th sample: the periodic structure of
voiced sounds (coherent harmonics) that a magnitude loss cannot see. :class:`Discriminators`
concatenates the logits and feature lists of several discriminators (DAC and Vocos train with
periods and spectrograms together).
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["STFTDiscriminator", "MultiScaleSTFTDiscriminator", "PeriodDiscriminator", "MultiPeriodDiscriminator",
           "Discriminators"]


def _conv(in_ch: int, out_ch: int, kernel: tuple[int, int], stride=(1, 1), dilation=(1, 1)) -> nn.Module:
    """Weight-normalised 2-D conv with 'same' padding (for stride 1)."""
    padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
    return weight_norm(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, dilation=dilation, padding=padding))


class STFTDiscriminator(nn.Module):
    """One EnCodec STFT sub-discriminator at a single resolution.

    ``filters`` sets the width (EnCodec uses 32); channel counts grow by ``filters_scale`` per layer
    up to ``max_filters``. The STFT is uncentred with a Hann window and normalised by the window's
    L2 norm, so the input must hold at least ``n_fft`` samples.
    """

    def __init__(
        self,
        filters: int = 32,
        in_channels: int = 1,
        n_fft: int = 1024,
        hop_length: int | None = None,
        kernel_size: tuple[int, int] = (3, 9),
        stride: tuple[int, int] = (1, 2),
        dilations: Sequence[int] = (1, 2, 4),
        filters_scale: int = 1,
        max_filters: int = 1024,
        negative_slope: float = 0.2,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.n_fft = n_fft
        self.hop_length = hop_length or n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.activation = nn.LeakyReLU(negative_slope)

        self.convs = nn.ModuleList([_conv(2 * in_channels, filters, kernel_size)])
        in_ch = min(filters_scale * filters, max_filters)
        for i, dilation in enumerate(dilations):
            out_ch = min(filters_scale ** (i + 1) * filters, max_filters)
            self.convs.append(_conv(in_ch, out_ch, kernel_size, stride=stride, dilation=(dilation, 1)))
            in_ch = out_ch
        out_ch = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        square = (kernel_size[0], kernel_size[0])
        self.convs.append(_conv(in_ch, out_ch, square))
        self.conv_post = _conv(out_ch, 1, square)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> real/imag STFT channels ``[B, 2C, frames, freqs]``."""
        if x.shape[-1] < self.n_fft:
            raise ValueError(f"discriminator needs at least n_fft={self.n_fft} samples, got {x.shape[-1]}")
        b = x.shape[0]
        spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), self.n_fft, hop_length=self.hop_length,
                          window=self.window, center=False, return_complex=True)
        spec = spec / self.window.pow(2).sum().sqrt()
        spec = rearrange(spec, "(b c) f t -> b c t f", b=b)
        return torch.cat([spec.real, spec.imag], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns ``(logits [B, 1, frames, freqs'], feature maps of every hidden layer)``."""
        z = self.spectrogram(x)
        features = []
        for conv in self.convs:
            z = self.activation(conv(z))
            features.append(z)
        return self.conv_post(z), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """Several :class:`STFTDiscriminator` s at different resolutions (EnCodec: 1024, 2048, 512).

    ``forward(x)`` takes ``[B, C, T]`` (``C == in_channels``, mono or stereo) and returns
    ``(logits, features)``: one logits tensor and one list of feature maps per sub-discriminator,
    the shape :mod:`codeclm.training.losses`' adversarial losses expect. Hop lengths are n_fft / 4.
    """

    def __init__(self, filters: int = 32, in_channels: int = 1, n_ffts: Sequence[int] = (1024, 2048, 512), **kwargs):
        super().__init__()
        self.in_channels = in_channels
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(filters, in_channels=in_channels, n_fft=n, hop_length=n // 4, **kwargs) for n in n_ffts
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        _check_audio(x, self.in_channels)
        logits, features = [], []
        for disc in self.discriminators:
            logit, feats = disc(x)
            logits.append(logit)
            features.append(feats)
        return logits, features


def _check_audio(x: torch.Tensor, channels: int) -> None:
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"expected audio [batch, {channels}, samples], got {tuple(x.shape)}")


class PeriodDiscriminator(nn.Module):
    """One HiFi-GAN period sub-discriminator.

    The waveform is right-padded (reflect) to a multiple of ``period`` and folded to
    ``[B, C, T / period, period]``; then ``(kernel, 1)`` convs with time stride 3 (HiFi-GAN: 32,
    128, 512, 1024, 1024 channels; here ``filters`` x 1, 4, 16, 32, 32 capped at ``max_filters``),
    a last stride-1 conv and a ``(3, 1)`` 1-channel output conv, weight-normalised, LeakyReLU(0.1).
    """

    def __init__(self, period: int, filters: int = 32, in_channels: int = 1, kernel_size: int = 5,
                 stride: int = 3, max_filters: int = 1024, negative_slope: float = 0.1):
        super().__init__()
        if period < 1:
            raise ValueError(f"a period discriminator needs a period >= 1, got {period}")
        self.period, self.in_channels = period, in_channels
        self.activation = nn.LeakyReLU(negative_slope)
        widths = [min(filters * m, max_filters) for m in (1, 4, 16, 32)]
        pad = ((kernel_size - 1) // 2, 0)
        convs, in_ch = [], in_channels
        for out_ch in widths:
            convs.append(weight_norm(nn.Conv2d(in_ch, out_ch, (kernel_size, 1), (stride, 1), padding=pad)))
            in_ch = out_ch
        convs.append(weight_norm(nn.Conv2d(in_ch, in_ch, (kernel_size, 1), padding=pad)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(in_ch, 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[B, C, T]`` -> ``(logits [B, 1, T', period], feature maps of every hidden layer)``."""
        rest = (-x.shape[-1]) % self.period
        if rest:
            x = torch.nn.functional.pad(x, (0, rest), mode="reflect" if x.shape[-1] > rest else "replicate")
        z = rearrange(x, "b c (t p) -> b c t p", p=self.period)
        features = []
        for conv in self.convs:
            z = self.activation(conv(z))
            features.append(z)
        return self.conv_post(z), features


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's period sub-discriminators (periods 2, 3, 5, 7, 11: primes, so the folds overlap little).

    ``forward(x)`` takes ``[B, C, T]`` and returns ``(logits, features)`` with one entry per period,
    the shape of :class:`MultiScaleSTFTDiscriminator`'s output.
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), filters: int = 32, in_channels: int = 1, **kwargs):
        super().__init__()
        if not periods:
            raise ValueError("a multi-period discriminator needs at least one period")
        self.in_channels = in_channels
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(p, filters, in_channels=in_channels, **kwargs) for p in periods)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        _check_audio(x, self.in_channels)
        logits, features = [], []
        for disc in self.discriminators:
            logit, feats = disc(x)
            logits.append(logit)
            features.append(feats)
        return logits, features


class Discriminators(nn.Module):
    """Several multi-discriminators as one: their logits and feature lists, concatenated in order,
    so the hinge and feature-matching losses average over every sub-discriminator alike."""

    def __init__(self, *discriminators: nn.Module):
        super().__init__()
        if not discriminators:
            raise ValueError("Discriminators needs at least one discriminator")
        self.parts = nn.ModuleList(discriminators)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, features = [], []
        for part in self.parts:
            lg, ft = part(x)
            logits.extend(lg)
            features.extend(ft)
        return logits, features
