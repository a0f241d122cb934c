"""EnCodec's multi-scale STFT discriminator (Défossez et al., 2022).

Each sub-discriminator looks at the complex STFT of the waveform at one resolution, with the
real and imaginary parts of every audio channel stacked as input channels of a small 2-D CNN:
a first conv, then convs dilated 1, 2, 4 in time and strided 2 in frequency, a last conv and a
1-channel output conv, all weight-normalised, LeakyReLU(0.2) between them. Layers work on
``[batch, channels, frames, freqs]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["STFTDiscriminator", "MultiScaleSTFTDiscriminator"]


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
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected audio [batch, {self.in_channels}, samples], got {tuple(x.shape)}")
        logits, features = [], []
        for disc in self.discriminators:
            logit, feats = disc(x)
            logits.append(logit)
            features.append(feats)
        return logits, features
