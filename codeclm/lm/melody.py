"""Melody conditioning (MusicGen-melody style): a reference clip's chromagram as LM conditioning.

    idx = chroma_indices(wav, sample_rate=24000, hop_length=480)     # [B, T] in 0..12 (12: silent)
    cond = MelodyConditioner(dim=128)
    emb, mask = cond(idx)                                              # [B, T, 128], [B, T] bool

The indices come from :func:`~codeclm.chroma.chroma_indices` (:mod:`codeclm.chroma`, the feature
extraction, shared with the token cache and music evaluation; its names are re-exported here): the
dominant pitch class of each codec frame, 12 for a silent frame.

:class:`MelodyConditioner` embeds the indices (13 rows: 12 pitch classes + silence), adds
sinusoidal positions (time alignment for cross-attention) and a LayerNorm. It is the ``melody``
type of :mod:`codeclm.lm.conditioning`: its spec's ``fuse`` is ``cross`` (appended to the text's
states along the cross-attention axis, the shipped models) or ``sum`` (one state per frame, added
to the LM input at the step predicting that frame; then ``dim`` is the LM's). The null condition
(CFG, or a prompt without melody) is all zeros with an all-False mask, like the text's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from codeclm.chroma import (F_MAX, F_MIN, N_CHROMA, SILENT, chroma_filterbank,  # noqa: F401 (re-exported)
                            chroma_indices)
from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.conditioning import Conditioner
from codeclm.lm.layers import sinusoidal_embedding
from codeclm.pretrained import fused_state_dict, load_weights_into, read_json, read_weights, save_folder

__all__ = ["MODEL_TYPE", "N_CHROMA", "SILENT", "MelodyConditioner", "chroma_filterbank", "chroma_indices"]

MODEL_TYPE = "codeclm-melody"


class MelodyConditioner(Conditioner):
    """``forward(indices [B, T]) -> (emb [B, T, dim], mask [B, T])``; mask is False where an index
    is negative (padding / no melody)."""

    kind = "melody"
    data_field = "chroma"  # training: a token cache's per-frame chroma (tokenize --chroma)

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

    def prepare(self, value, batch: int, context) -> torch.Tensor:
        """Chroma indices ``[batch, T]`` (-1: no melody) for :meth:`forward` (the provider's stage 1).

        ``value``: None (no melody: one masked frame per row); an integer tensor ``[batch, T]`` of
        indices, used as is; or one item, or a list of one per row, each an audio path, a float
        tensor ``[channels, samples]`` at ``context.sample_rate``, ``(tensor, rate)`` (chroma of
        ``context.n_frames`` frames of ``context.hop_length`` samples), an integer tensor ``[t]``
        of indices (padded with -1 to ``n_frames``) or None (no melody)."""
        if value is None:
            return torch.full((batch, 1), -1, dtype=torch.long)
        if torch.is_tensor(value) and not value.is_floating_point() and value.dim() == 2:
            if value.shape[0] != batch:
                raise CodecLMError(f"got melody indices for {value.shape[0]} rows, the batch has {batch}")
            return value.long()
        items = list(value) if isinstance(value, (list, tuple)) and not (
            len(value) == 2 and torch.is_tensor(value[0]) and isinstance(value[1], int)) else [value] * batch
        if len(items) != batch:
            raise CodecLMError(f"got {len(items)} melodies for {batch} prompts")
        n_frames = context.n_frames
        lengths = [n_frames] if n_frames is not None else []
        lengths += [len(v) for v in items if torch.is_tensor(v) and not v.is_floating_point()]
        T = max(lengths or [1])
        rows = torch.full((batch, T), -1, dtype=torch.long)
        for b, item in enumerate(items):
            if item is None:
                continue
            if torch.is_tensor(item) and not item.is_floating_point():  # indices (a token cache's chroma)
                rows[b, : item.shape[-1]] = item.long()
                continue
            from codeclm.audio import audio_argument  # paths, (tensor, rate), resampling

            rate = context.sample_rate
            wav = audio_argument(item, rate, name="melody", default_rate=rate)
            if wav.shape[-1] < context.hop_length:
                raise CodecLMError(f"melody clip is too short ({wav.shape[-1]} samples)")
            rows[b] = chroma_indices(wav, rate, context.hop_length, n_frames=T)[0]
        return rows

    def config(self) -> dict:
        return {"dim": self.dim, "max_period": self.max_period}

    # -- files ------------------------------------------------------------------------------------
    def save_folder(self, folder: str | os.PathLike) -> Path:
        config = {"model_type": MODEL_TYPE, "dim": self.dim, "max_period": self.max_period}
        return save_folder(folder, config, fused_state_dict(self))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> MelodyConditioner:
        folder = Path(folder)
        cfg = read_json(folder / "config.json", "melody conditioner")
        if cfg.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"{folder}: holds a {cfg.get('model_type')!r} model, not {MODEL_TYPE!r}")
        model = cls(dim=int(cfg["dim"]), max_period=float(cfg.get("max_period", 10_000.0)))
        load_weights_into(model, read_weights(folder), str(folder))
        return model.eval()
