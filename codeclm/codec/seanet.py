"""SEANet encoder and decoder (EnCodec/SoundStream), built from the streaming layers.

The layer order mirrors EnCodec (and ``transformers``' port) one to one, so importing its
weights is a walk over two module lists of the same shape.

Inside a streaming block (the codec's exact path, offline passes of causal models included)
both run on time-major rows (:func:`~codeclm.codec.layers.seanet_stream_rows`: every conv one
row-invariant GEMM on a packed weight); outside it, the plain channel-major layers (training).
"""

from __future__ import annotations

import torch
from torch import nn

from codeclm.codec.config import CodecConfig
from codeclm.codec.layers import (ELU, ResidualUnit, StreamingConv1d, StreamingConvTranspose1d, StreamingLSTM,
                                  seanet_stream_rows)
from codeclm.errors import ConfigError


def _conv_kw(cfg: CodecConfig) -> dict:
    return {"causal": cfg.causal, "pad_mode": cfg.pad_mode, "norm": cfg.norm}


def _residual_units(cfg: CodecConfig, dim: int) -> list[nn.Module]:
    return [
        ResidualUnit(dim, cfg.residual_kernel_size, (cfg.dilation_base ** j, 1), cfg.compress, cfg.conv_shortcut,
                     **_conv_kw(cfg))
        for j in range(cfg.n_residual_layers)
    ]


class SEANetEncoder(nn.Module):
    """Audio ``[B, channels, T]`` -> latent ``[B, dimension, T / hop]``."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        kw = _conv_kw(cfg)
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size, **kw)]
        scale = 1
        for ratio in reversed(cfg.ratios):
            dim = scale * cfg.n_filters
            layers += _residual_units(cfg, dim)
            layers += [ELU(), StreamingConv1d(dim, dim * 2, kernel=ratio * 2, stride=ratio, **kw)]
            scale *= 2
        if cfg.lstm_layers:
            layers.append(StreamingLSTM(scale * cfg.n_filters, cfg.lstm_layers))
        layers += [ELU(), StreamingConv1d(scale * cfg.n_filters, cfg.dimension, cfg.last_kernel_size, **kw)]
        self.layers = nn.ModuleList(layers)
        _assign_frame_lengths(self, cfg.hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _streaming(self):
            return seanet_stream_rows(self.layers, x.transpose(1, 2).contiguous()).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, F]`` -> audio ``[B, channels, F * hop]``."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        kw = _conv_kw(cfg)
        scale = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, scale * cfg.n_filters, cfg.kernel_size, **kw)]
        if cfg.lstm_layers:
            layers.append(StreamingLSTM(scale * cfg.n_filters, cfg.lstm_layers))
        for ratio in cfg.ratios:
            dim = scale * cfg.n_filters
            layers += [ELU(), StreamingConvTranspose1d(dim, dim // 2, kernel=ratio * 2, stride=ratio,
                                                      causal=cfg.causal, norm=cfg.norm,
                                                      trim_right_ratio=cfg.trim_right_ratio)]
            layers += _residual_units(cfg, dim // 2)
            scale //= 2
        layers += [ELU(), StreamingConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size, **kw)]
        self.layers = nn.ModuleList(layers)
        _assign_frame_lengths(self, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _streaming(self):
            return seanet_stream_rows(self.layers, x.transpose(1, 2).contiguous()).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x


def _streaming(model: nn.Module) -> bool:
    """The layers are inside a streaming block (their first conv has a stream state)."""
    return model.layers[0].is_streaming


def _assign_frame_lengths(model: nn.Module, start: int) -> None:
    """Tell each conv how many input samples one code frame has at its depth."""
    length = start
    for module in model.modules():  # registration order == execution order for these models
        if isinstance(module, StreamingConv1d):
            module.frame_length = length
            if length % module.stride:
                raise ConfigError(f"codec config: stride {module.stride} does not divide {length} samples/frame")
            length //= module.stride
        elif isinstance(module, StreamingConvTranspose1d):
            module.frame_length = length
            reach = -(-module.convtr.kernel_size[0] // module.stride)
            if reach - 1 > length:
                raise ConfigError("codec config: transposed-conv kernel spans more than one frame")
            length *= module.stride
