"""VALL-E: zero-shot TTS as language modelling over codec codes, built from the token-LM core.

Two transformers, each a :class:`~codeclm.lm.transformer.TokenLM` that cross-attends to its own
phoneme encoder (:class:`~codeclm.lm.text_encoder.TokenEncoder`) over the phonemes of
``prompt transcript + target text``:

* **AR** (``causal=True``, one codebook): predicts the first codebook frame by frame after the
  prompt's first-codebook codes. Its vocabulary has one extra token, ``EOS = card``, that ends the
  utterance; ``card + 1`` is the start token. KV-cache decoding and the shared sampler
  (temperature, top-k, top-p) are the LM core's.
* **NAR** (``causal=False``, K codebooks): fills codebook ``j = 1 .. K-1`` of the whole target in
  one pass each, reading the full prompt codes and the target's codebooks ``< j``. Codebooks not
  known yet are the special token ``card`` (so the input itself tells the model which level it
  predicts); the logits of head ``j`` at the target positions are taken greedily, as in VALL-E.

Training (``codeclm.training.valle_task``) follows VALL-E: the AR is a plain causal LM over the
whole utterance (first codebook + EOS) given all its phonemes; for the NAR a random prefix
(up to ``max_prompt_seconds``) of the same utterance is the acoustic prompt and the loss is over
the rest, at one random level per item.

Sequences are processed one utterance at a time where lengths differ inside the bidirectional
NAR (no padding ever enters its attention), so a result never depends on what it is batched with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.config import LMConfig
from codeclm.lm.sampling import check_sampling_params
from codeclm.lm.text_encoder import TokenEncoder
from codeclm.lm.transformer import TokenLM
from codeclm.pretrained import SavedConfig, fused_state_dict, load_folder, save_folder

__all__ = ["MODEL_TYPE", "Valle", "ValleConfig"]

MODEL_TYPE = "codeclm-valle"


@dataclass
class ValleConfig(SavedConfig):
    """Sizes of the AR and NAR transformers and their phoneme encoders."""

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "VALL-E"

    n_q: int = 6  # codebooks modelled: the first by the AR, the rest by the NAR
    card: int = 1024  # codec codebook size
    vocab_size: int = 128  # phoneme vocabulary (codeclm.tokenizers.PhonemeVocab)
    dim: int = 256
    num_heads: int = 4
    ar_layers: int = 6
    nar_layers: int = 6
    text_layers: int = 2
    hidden_scale: float = 4.0
    dropout: float = 0.1
    positional: str = "sinusoidal"
    frame_rate: float = 50.0  # of the codec (frames per second)
    max_frames: int = 1000  # prompt + target frames (AR cache, 20 s at 50 Hz)
    max_prompt_seconds: float = 6.0  # longer references are cropped
    min_prompt_seconds: float = 1.0  # shorter ones are refused
    max_frames_per_phoneme: float = 12.0  # AR stops by then if it has not emitted EOS
    min_frames_per_phoneme: float = 3.0  # EOS is not allowed before this (60 ms per phoneme at 50 Hz)

    def __post_init__(self) -> None:
        if self.n_q < 2:
            raise ConfigError(f"valle config: n_q must be >= 2 (AR + NAR), got {self.n_q}")
        if not 0 < self.min_prompt_seconds <= self.max_prompt_seconds:
            raise ConfigError("valle config: need 0 < min_prompt_seconds <= max_prompt_seconds")
        if self.vocab_size < 1 or self.text_layers < 0:
            raise ConfigError("valle config: vocab_size must be >= 1 and text_layers >= 0")
        self.ar_config()  # raises ConfigError for bad sizes
        self.nar_config()

    def _lm(self, **kw) -> LMConfig:
        return LMConfig(dim=self.dim, num_heads=self.num_heads, hidden_scale=self.hidden_scale,
                        dropout=self.dropout, positional=self.positional, cross_attention=True,
                        pattern="parallel", **kw)

    def ar_config(self) -> LMConfig:
        # card + 1 outputs: the codes and EOS; the embedding's extra row (card + 1) is the start token
        return self._lm(n_q=1, card=self.card + 1, num_layers=self.ar_layers, max_seq_len=self.max_frames + 2)

    def nar_config(self) -> LMConfig:
        return self._lm(n_q=self.n_q, card=self.card, num_layers=self.nar_layers, causal=False,
                        max_seq_len=self.max_frames)

    @property
    def max_prompt_frames(self) -> int:
        return int(self.max_prompt_seconds * self.frame_rate)


class Valle(nn.Module):
    """The AR and NAR stages with their phoneme encoders; ``generate`` runs both."""

    def __init__(self, config: ValleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.ar_text = TokenEncoder(c.vocab_size, c.dim, c.text_layers, c.num_heads, dropout=c.dropout)
        self.ar = TokenLM(c.ar_config())
        self.nar_text = TokenEncoder(c.vocab_size, c.dim, c.text_layers, c.num_heads, dropout=c.dropout)
        self.nar = TokenLM(c.nar_config())

    @property
    def eos(self) -> int:
        return self.config.card

    @property
    def ar_start(self) -> int:
        return self.config.card + 1

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- training losses ------------------------------------------------------------------------------
    def forward(self, phonemes: torch.Tensor, phoneme_mask: torch.Tensor, codes: torch.Tensor, frames: torch.Tensor,
                prompt_frames: torch.Tensor, levels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both training losses in one pass: :meth:`ar_loss` on the first codebook of ``codes
        [B, K, T]`` and :meth:`nar_loss` at ``levels`` after ``prompt_frames``. Training goes
        through ``forward`` so that a DDP-wrapped model synchronises the gradients of both stages.
        Returns ``{"loss": ar + nar, "ar_ce", "nar_ce", "ar_acc", "nar_acc"}``."""
        ar, ar_acc = self.ar_loss(phonemes, phoneme_mask, codes[:, 0], frames)
        nar, nar_acc = self.nar_loss(phonemes, phoneme_mask, codes, frames, prompt_frames, levels)
        return {"loss": ar + nar, "ar_ce": ar, "nar_ce": nar, "ar_acc": ar_acc, "nar_acc": nar_acc}

    def ar_loss(self, phonemes: torch.Tensor, phoneme_mask: torch.Tensor, codes: torch.Tensor,
                frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token CE of the first codebook + EOS: ``codes [B, T]`` with ``frames[b]`` real frames.
        Returns ``(mean CE, top-1 accuracy)``."""
        B, T = codes.shape
        frames = frames.to(codes.device)
        t = torch.arange(T + 1, device=codes.device)[None, :]
        target = torch.cat([codes, codes.new_full((B, 1), self.eos)], 1)
        target = torch.where(t == frames[:, None], self.eos, target)
        target = torch.where(t > frames[:, None], -100, target)  # padding: ignored
        inputs = torch.cat([codes.new_full((B, 1), self.ar_start), target[:, :-1].clamp(min=0)], 1)
        cond, cond_mask = self.ar_text.encode_ids(phonemes, phoneme_mask)
        logits = self.ar(inputs[:, None], cond, cond_mask)[:, 0]  # [B, T + 1, card + 1]
        loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100)
        valid = target >= 0
        acc = ((logits.argmax(-1) == target) & valid).sum() / valid.sum().clamp(min=1)
        return loss, acc.detach()

    def nar_input(self, prompt: torch.Tensor, target: torch.Tensor, level: int) -> torch.Tensor:
        """``[K, Tp + Tt]``: the prompt's codes, then the target's codebooks ``< level`` (the rest
        are the special token ``card``)."""
        known = target.clone()
        known[level:] = self.config.card
        return torch.cat([prompt, known], 1)

    def nar_loss(self, phonemes: torch.Tensor, phoneme_mask: torch.Tensor, codes: torch.Tensor,
                 frames: torch.Tensor, prompt_frames: torch.Tensor, levels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """CE of codebook ``levels[b]`` over frames ``prompt_frames[b] .. frames[b]`` of ``codes
        [B, K, T]`` (the frames before are the prompt). One unpadded sequence per item."""
        cond, cond_mask = self.nar_text.encode_ids(phonemes, phoneme_mask)
        losses, hits, count = [], 0, 0
        for b in range(codes.shape[0]):
            n, p, j = int(frames[b]), int(prompt_frames[b]), int(levels[b])
            real = codes[b, : self.config.n_q, :n]
            seq = self.nar_input(real[:, :p], real[:, p:], j)
            pm = phoneme_mask[b].bool()
            logits = self.nar(seq[None], cond[b:b + 1, pm[: cond.shape[1]]], None)[0, j, p:]  # [n - p, card]
            target = real[j, p:]
            losses.append(F.cross_entropy(logits.float(), target, reduction="sum"))
            hits += int((logits.argmax(-1) == target).sum())
            count += target.numel()
        loss = torch.stack(losses).sum() / max(count, 1)
        return loss, torch.tensor(hits / max(count, 1))

    # -- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, phonemes: torch.Tensor, prompt: torch.Tensor, target_phonemes: int | None = None,
                 temperature: float = 1.0, top_k: int = 50, top_p: float = 0.0, do_sample: bool = True,
                 generator: torch.Generator | None = None, max_new_frames: int | None = None,
                 on_frame: Callable[[int], None] | None = None) -> torch.Tensor:
        """Codes ``[K, T]`` of the target speech.

        ``phonemes [P]``: ids of prompt transcript + target text; ``prompt [K, Tp]``: the reference's
        codes. The AR stops at EOS, after ``max_new_frames``, or after ``max_frames_per_phoneme *
        target_phonemes`` frames (``target_phonemes`` defaults to all of ``phonemes``); EOS is
        masked for the first ``min_frames_per_phoneme * target_phonemes`` frames (a young model
        otherwise tends to end the utterance early). :meth:`generate_batch` with one item.
        """
        return self.generate_batch([phonemes], [prompt], [target_phonemes], temperature, top_k, top_p, do_sample,
                                   [generator], max_new_frames, on_frame)[0]

    @torch.no_grad()
    def generate_batch(self, phonemes: list[torch.Tensor], prompts: list[torch.Tensor],
                       target_phonemes: list[int | None] | None = None, temperature: float = 1.0, top_k: int = 50,
                       top_p: float = 0.0, do_sample: bool = True,
                       generators: list[torch.Generator | None] | None = None, max_new_frames: int | None = None,
                       on_frame: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Codes ``[K, T_b]`` per item, as :meth:`generate` of each item with its own generator.

        The AR runs on the shared generation loop (:func:`codeclm.lm.generate.iter_codes`): items
        whose prompts have the same length (e.g. one voice, many sentences) go through it in one
        batch (phonemes padded and masked); EOS is a stopping criterion, the minimum length a
        logits processor, each row samples from its own generator. The NAR fills each item's
        codebooks 1 .. K-1 on its own unpadded sequence (greedy)."""
        from codeclm.lm.generate import iter_codes
        from codeclm.lm.logits import (EosStoppingCriteria, LogitsProcessorList, MaxNewTokensCriteria,
                                       MinNewTokensLogitsProcessor, StoppingCriteriaList)

        check_sampling_params(temperature, top_k, top_p)
        c = self.config
        n = len(phonemes)
        target_phonemes = list(target_phonemes) if target_phonemes is not None else [None] * n
        generators = list(generators) if generators is not None else [None] * n
        if n == 0 or not (len(prompts) == len(target_phonemes) == len(generators) == n):
            raise CodecLMError("generate_batch needs one prompt (and target length, generator) per item")
        device = self.device
        items = []
        for ph, prompt, tp in zip(phonemes, prompts, target_phonemes):
            if prompt.dim() != 2 or prompt.shape[0] < c.n_q or prompt.shape[1] < 1:
                raise CodecLMError(f"prompt codes must be [>= {c.n_q}, Tp >= 1], got {tuple(prompt.shape)}")
            ph = ph.to(device).long().flatten()
            prompt = prompt[: c.n_q].to(device).long()
            budget = c.max_frames - prompt.shape[1]
            n_target = tp or ph.shape[0]
            limit = min(budget, int(c.max_frames_per_phoneme * n_target),
                        max_new_frames if max_new_frames is not None else budget)
            if limit < 1:
                raise CodecLMError(f"no room to generate: prompt of {prompt.shape[1]} frames, model max {c.max_frames}")
            items.append((ph, prompt, limit, min(int(c.min_frames_per_phoneme * n_target), limit)))
        firsts: list[torch.Tensor | None] = [None] * n
        groups: dict[int, list[int]] = {}
        for i, (_, prompt, _, _) in enumerate(items):
            groups.setdefault(prompt.shape[1], []).append(i)
        pattern = self.ar.config.get_pattern()
        for P, rows in groups.items():
            B = len(rows)
            lengths = [items[i][0].shape[0] for i in rows]
            ph = torch.zeros(B, max(lengths), dtype=torch.long, device=device)
            ph_mask = torch.zeros_like(ph, dtype=torch.bool)
            for b, i in enumerate(rows):
                ph[b, : lengths[b]], ph_mask[b, : lengths[b]] = items[i][0], True
            limits = torch.tensor([items[i][2] for i in rows], device=device)
            mins = torch.tensor([items[i][3] for i in rows], device=device)
            cond, cond_mask = self.ar_text.encode_ids(ph, ph_mask)
            prompt_codes = torch.stack([items[i][1][:1] for i in rows])  # [B, 1, P]
            on_step = (lambda done, total: on_frame(done)) if on_frame is not None else None
            chunks = iter_codes(self.ar, pattern, B, P + int(limits.max()), cond, cond_mask, temperature=temperature,
                                top_k=top_k, top_p=top_p, do_sample=do_sample, generator=[generators[i] for i in rows],
                                prompt_codes=prompt_codes, on_step=on_step,
                                logits_processor=LogitsProcessorList([MinNewTokensLogitsProcessor(P, mins, self.eos)]),
                                stopping_criteria=StoppingCriteriaList([EosStoppingCriteria(self.eos),
                                                                        MaxNewTokensCriteria(P, limits)]),
                                pad_token_id=self.eos)
            first = torch.cat(list(chunks), 2)[:, 0, P:]  # [B, new]: codes, then EOS (ended / padded)
            for b, i in enumerate(rows):
                row = first[b, : int(limits[b])]
                ended = torch.nonzero(row == self.eos).flatten()
                firsts[i] = row[: int(ended[0])] if ended.numel() else row
        out = []
        for (ph, prompt, _, _), first in zip(items, firsts):
            if first.numel() == 0:
                raise CodecLMError("the model produced no speech (end of utterance at the first frame)")
            target = prompt.new_full((c.n_q, first.shape[0]), c.card)
            target[0] = first
            # NAR: codebooks 1 .. K-1, greedy, on the item's own sequence
            cond, cond_mask = self.nar_text.encode_ids(ph[None], torch.ones_like(ph[None], dtype=torch.bool))
            p = prompt.shape[1]
            for j in range(1, c.n_q):
                logits = self.nar(self.nar_input(prompt, target, j)[None], cond, cond_mask)[0, j, p:]
                target[j] = logits.argmax(-1)
            out.append(target)
        return out

    # -- files ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        return save_folder(folder, self.config.to_dict(), fused_state_dict(self), dtype)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> Valle:
        return load_folder(cls, ValleConfig, folder).to(device).eval()
