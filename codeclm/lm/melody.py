"""Melody conditioning (MusicGen-melody style): a reference clip's chromagram as LM conditioning.

    idx = chroma_indices(wav, sample_rate=24000, hop_length=480)     # [B, T] in 0..12 (12: silent)
    cond = MelodyConditioner(dim=128)
    emb, mask = cond(idx)                                              # [B, T, 128], [B, T] bool

The indices come from :func:`~codeclm.chroma.chroma_indices` (:mod:`codeclm.chroma`, the feature
extraction, shared with the token cache and music evaluation; its names are re-exported here): the
dominant pitch class of each codec frame, 12 for a silent frame.

:class:`MelodyConditioner` embeds the indices (13 rows: 12 pitch classes + silence), adds
sinusoidal positions (time alignment for cross-attention) and a LayerNorm. Pipelines append its
output to the text conditioning along the cross-attention axis; the null condition (CFG, or a
prompt without melody) is all zeros with an all-False mask, like the text's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from codeclm.chroma import (F_MAX, F_MIN, N_CHROMA, SILENT, chroma_filterbank,  # noqa: F401 (re-exported)
                            chroma_indices)
from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.layers import sinusoidal_embedding
from codeclm.pretrained import fused_state_dict, load_weights_into, read_json, read_weights, save_folder

__all__ = ["MODEL_TYPE", "N_CHROMA", "SILENT", "MelodyConditioner", "chroma_filterbank", "chroma_indices"]

MODEL_TYPE = "codeclm-melody"


class MelodyConditioner(nn.Module):
    """``forward(indices [B, T]) -> (emb [B, T, dim], mask [B, T])``; mask is False where an index
    is negative (padding / no melody)."""

    kind = "melody"

    def __init__(self, dim: int = 128, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"melody conditioner: dim must be even and >= 2, got {dim}")
        self.dim, self.max_period = int(dim), float(max_period)
        self.output_dim = self.dim
        self.emb = nn.Embedding(N_CHROMA + 1, dim)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def forward(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = indices.to(self.device)
        if indices.dim() != 2:
            raise CodecLMError(f"melody indices must be [B, T], got {tuple(indices.shape)}")
        mask = indices >= 0
        x = self.emb(indices.clamp(0, N_CHROMA)) * self.dim ** 0.5  # as the text encoder: content ~ positions
        x = x + sinusoidal_embedding(torch.arange(indices.shape[1], device=x.device), self.dim,
                                     self.max_period).to(x.dtype)
        x = self.norm(x) * mask[..., None].to(x.dtype)
        return x, mask

    def null(self, batch: int, frames: int) -> torch.Tensor:
        """Indices meaning "no melody" (all masked)."""
        return torch.full((batch, frames), -1, dtype=torch.long, device=self.device)

    # -- files ------------------------------------------------------------------------------------
    def save_folder(self, folder: str | os.PathLike) -> Path:
        config = {"model_type": MODEL_TYPE, "dim": self.dim, "max_period": self.max_period}
        return save_folder(folder, config, {k: v.detach().cpu() for k, v in fused_state_dict(self).items()})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> MelodyConditioner:
        folder = Path(folder)
        cfg = read_json(folder / "config.json", "melody conditioner")
        if cfg.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"{folder}: holds a {cfg.get('model_type')!r} model, not {MODEL_TYPE!r}")
        model = cls(dim=int(cfg["dim"]), max_period=float(cfg.get("max_period", 10_000.0)))
        load_weights_into(model, read_weights(folder), str(folder))
        return model.eval()
