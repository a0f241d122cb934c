"""Text conditioners: prompt strings -> the cross-attention input of a :class:`TokenLM`.

Protocol (every conditioner implements it)::

    tokens = cond.tokenize(["80s synth pop", ""])   # CPU work: dict of tensors
    emb, mask = cond(tokens)                          # emb [B, T, output_dim], mask [B, T] bool
    cond.save(folder); Cls.load(folder)               # its files (tokenizer, weights)

``output_dim`` is the width of ``emb`` (the LM's ``cond_dim``). Empty strings are allowed. The
classifier-free-guidance null condition is *not* the embedding of an empty string: as in
MusicGen it is all zeros with an all-False mask (:meth:`TextConditioner.null_condition`).

A folder written by :meth:`TextConditioner.save_folder` holds ``conditioner.json`` (its
``type``) beside the conditioner's own files; :func:`load_conditioner` dispatches on that type
through :data:`codeclm.lm.conditioning.CONDITIONERS` (:func:`register_conditioner` adds a type).
A text conditioner is a :class:`codeclm.lm.conditioning.Conditioner`: its ``prepare`` is
``tokenize`` (a :class:`~codeclm.lm.conditioning.ConditioningProvider` calls it by name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from codeclm.errors import ConfigError
from codeclm.lm.conditioning import CONDITIONERS, Conditioner, conditioner_class, register_conditioner, texts_per_row

__all__ = ["CONDITIONERS", "T5Conditioner", "TextConditioner", "load_conditioner", "register_conditioner"]

CONDITIONER_FILE = "conditioner.json"


class TextConditioner(Conditioner):
    """Base class: ``tokenize`` (CPU) then ``forward`` -> ``(emb [B, T, D], mask [B, T] bool)``."""

    kind = "text"
    output_dim: int
    data_field = "caption"  # training: a token cache entry's caption

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, value, batch: int, context=None) -> dict[str, torch.Tensor]:
        """The provider's stage 1: ``value`` is one caption per row (a string: the same for all;
        None or None entries: the empty caption)."""
        texts = texts_per_row(value, batch, "texts")
        return self.tokenize(["" if t is None else t for t in texts])

    def forward(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def save(self, folder: str | os.PathLike) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TextConditioner:
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------------------
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokenize`` + ``forward`` under no_grad, on the conditioner's device."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        with torch.no_grad():
            emb, mask = self(tokens)
        return emb, mask.bool()

    @staticmethod
    def null_condition(emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CFG's unconditional input, as MusicGen: zeroed states and an all-False mask."""
        return torch.zeros_like(emb), torch.zeros_like(mask, dtype=torch.bool)

    def save_folder(self, folder: str | os.PathLike) -> Path:
        """``save`` plus ``conditioner.json`` naming the type for :func:`load_conditioner`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save(folder)
        (folder / CONDITIONER_FILE).write_text(json.dumps({"type": self.kind, "output_dim": self.output_dim}) + "\n")
        return folder


def load_conditioner(folder: str | os.PathLike) -> TextConditioner:
    """Load a folder written by :meth:`TextConditioner.save_folder`."""
    folder = Path(folder)
    path = folder / CONDITIONER_FILE
    if not path.exists():
        raise ConfigError(f"{folder}: not a text conditioner folder (missing {CONDITIONER_FILE})")
    try:
        kind = json.loads(path.read_text())["type"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: invalid conditioner description ({exc})") from None
    if kind not in CONDITIONERS:
        raise ConfigError(f"{path}: unknown conditioner type {kind!r}; known: {sorted(CONDITIONERS)}")
    return conditioner_class(kind).load(folder)


@register_conditioner("t5")
class T5Conditioner(TextConditioner):
    """A (frozen) transformers T5 encoder and its tokenizer, MusicGen's text conditioner.

    ``forward`` returns the encoder's last hidden state ``[B, T, d_model]`` and the tokenizer's
    attention mask; the LM's ``cond_proj`` (MusicGen's ``enc_to_dec_proj``) maps it to its width.
    """

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.output_dim = int(encoder.config.d_model)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        out = self.tokenizer(list(texts), padding=True, return_tensors="pt", **kwargs)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def forward(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = tokens["attention_mask"]
        emb = self.encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        return emb, mask.bool()

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.encoder.save_pretrained(str(folder / "encoder"))
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        (folder / "t5.json").write_text(json.dumps({"max_length": self.max_length}) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> T5Conditioner:
        from transformers import AutoTokenizer, T5EncoderModel

        folder = Path(folder)
        for sub in ("encoder", "tokenizer"):
            if not (folder / sub).is_dir():
                raise ConfigError(f"{folder}: T5 conditioner folder misses {sub}/")
        try:
            encoder = T5EncoderModel.from_pretrained(str(folder / "encoder"))
            tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        except Exception as exc:  # transformers raises many kinds
            raise ConfigError(f"{folder}: could not load the T5 conditioner ({exc})") from None
        extra = json.loads((folder / "t5.json").read_text()) if (folder / "t5.json").exists() else {}
        return cls(encoder, tokenizer, max_length=extra.get("max_length"))
