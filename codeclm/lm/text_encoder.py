"""The built-in text conditioner: a caption tokenizer + a small transformer encoder, trained with the LM.

    cond = BuiltinTextConditioner(CaptionTokenizer("tok.model"), dim=128)
    emb, mask = cond(cond.tokenize(["calm piano", ""]))   # [2, T, 128] float, [2, T] bool

Token embedding + sinusoidal positions, ``num_layers`` pre-norm ``nn.TransformerEncoderLayer``
blocks with a key padding mask, a final LayerNorm. Padded positions (and every position of an
empty text, CFG's null condition) come out as zeros with ``mask`` False; a valid position's
output depends only on its own text, not on what it is batched with.

Files (``save(folder)`` / ``load(folder)``): ``tokenizer.model`` + ``tokenizer.json`` (the
:class:`~codeclm.tokenizers.CaptionTokenizer`), ``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from codeclm.errors import ConfigError
from codeclm.lm.conditioners import TextConditioner, register_conditioner
from codeclm.lm.layers import sinusoidal_embedding
from codeclm.pretrained import (
    fused_state_dict,
    load_weights_into,
    read_json,
    read_weights,
    save_folder,
)
from codeclm.tokenizers.text import CaptionTokenizer

__all__ = ["MODEL_TYPE", "BuiltinTextConditioner", "TokenEncoder"]

MODEL_TYPE = "codeclm-text-builtin"


class TokenEncoder(nn.Module):
    """Token ids ``[B, T]`` + mask -> states ``[B, T, dim]``: embedding * sqrt(dim) + sinusoidal
    positions, ``num_layers`` pre-norm transformer encoder layers, LayerNorm; padded positions are
    zeros. Shared by the caption conditioner and the phoneme encoders of the TTS models."""

    def __init__(self, vocab_size: int, dim: int = 128, num_layers: int = 2, num_heads: int = 4,
                 ffn_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim < 2 or dim % 2 or dim % num_heads or num_layers < 0 or vocab_size < 1:
            raise ConfigError(f"token encoder: dim must be even and divisible by num_heads, num_layers >= 0, "
                              f"vocab_size >= 1 (got dim={dim}, num_heads={num_heads}, num_layers={num_layers}, "
                              f"vocab_size={vocab_size})")
        self.dim, self.num_layers, self.num_heads = int(dim), int(num_layers), int(num_heads)
        self.ffn_dim, self.dropout = int(ffn_dim or 4 * dim), float(dropout)
        self.output_dim = self.dim
        self.emb = nn.Embedding(vocab_size, dim)
        layer = nn.TransformerEncoderLayer(dim, num_heads, self.ffn_dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.emb.weight.device
        ids = ids.to(device)
        mask = mask.to(device=device, dtype=torch.bool)
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ConfigError(f"token encoder: ids and mask must be [B, T], got "
                              f"{tuple(ids.shape)} and {tuple(mask.shape)}")
        x = self.emb(ids) * self.dim ** 0.5
        x = x + sinusoidal_embedding(torch.arange(ids.shape[1], device=device), self.dim).to(x.dtype)
        if self.encoder is not None:
            # a row with no token (empty caption) attends to its padding instead of nothing (no NaN);
            # its output is zeroed below anyway
            attend = mask | ~mask.any(dim=1, keepdim=True)
            x = self.encoder(x, src_key_padding_mask=~attend)
        x = self.norm(x) * mask[..., None].to(x.dtype)
        return x, mask


@register_conditioner("builtin")
class BuiltinTextConditioner(TextConditioner, TokenEncoder):
    """``tokenize(texts) -> {"input_ids", "attention_mask"}``, ``forward(tokens) -> (emb [B, T, D], mask [B, T])``."""

    def __init__(self, tokenizer: CaptionTokenizer, dim: int = 128, num_layers: int = 2, num_heads: int = 4,
                 max_len: int = 64, ffn_dim: int | None = None, dropout: float = 0.0):
        if max_len < 1:
            raise ConfigError(f"text conditioner: max_len must be >= 1, got {max_len}")
        TokenEncoder.__init__(self, tokenizer.vocab_size, dim, num_layers, num_heads, ffn_dim, dropout)
        self.tokenizer = tokenizer
        self.tokenizer.max_len = int(max_len)
        self.max_len = int(max_len)

    # -- protocol -----------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenizer.encode(list(texts))
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_ids(tokens["input_ids"], tokens["attention_mask"])

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokenize`` + ``forward`` under no_grad (inference)."""
        with torch.no_grad():
            return self(self.tokenize([texts] if isinstance(texts, str) else list(texts)))

    # -- files --------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"model_type": MODEL_TYPE, "dim": self.dim, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "max_len": self.max_len, "ffn_dim": self.ffn_dim,
                "dropout": self.dropout, "vocab_size": self.tokenizer.vocab_size}

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        self.tokenizer.save(folder)
        save_folder(folder, self.config(), fused_state_dict(self))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> BuiltinTextConditioner:
        folder = Path(folder)
        cfg = read_json(folder / "config.json", "text conditioner")
        if cfg.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"{folder}: holds a {cfg.get('model_type')!r} model, not {MODEL_TYPE!r}")
        tok = CaptionTokenizer.load(folder)
        if tok.vocab_size != cfg["vocab_size"]:
            raise ConfigError(f"{folder}: tokenizer has {tok.vocab_size} pieces, config says {cfg['vocab_size']}")
        model = cls(tok, dim=cfg["dim"], num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
                    max_len=cfg["max_len"], ffn_dim=cfg["ffn_dim"], dropout=cfg.get("dropout", 0.0))
        load_weights_into(model, read_weights(folder), str(folder))
        return model.to(device).eval()
