"""Duration-guided VALL-E: the alignment is given, not learned.

VALL-E's AR must discover which phoneme each frame belongs to through cross-attention; with
little data it never does (bursts and hum). Here every codec frame of the target carries its
phoneme explicitly (RALL-E / FastSpeech-style length regulation inside a codec LM):

* a phoneme encoder (:class:`~codeclm.lm.text_encoder.TokenEncoder`, bidirectional, so each state
  knows its neighbours) reads the target's phoneme tokens;
* the *frame condition* of target frame ``t`` is the state of its phoneme plus embeddings of the
  frame's position inside the phoneme and of the frames left in it (so the model knows where the
  phoneme ends); prompt frames get one learned "prompt" vector instead (the reference's alignment
  is not needed at inference);
* **AR** (:class:`~codeclm.lm.transformer.TokenLM`, causal, no cross-attention, one codebook): step
  ``s`` reads the first-codebook code of frame ``s - 1`` (a start token at step 0) plus the frame
  condition of frame ``s`` and predicts frame ``s``'s code. The sequence is ``prompt frames +
  target frames``; the loss is over the target. The frame conditions go in as
  :class:`~codeclm.lm.conditioning.FusedCondition` ``sum``, so KV-cache decoding is the LM core's;
* **NAR** (bidirectional, K codebooks): codebook ``j`` of the target from the prompt's codes, the
  target's codebooks ``< j`` and the same kind of frame conditions (its own encoder), greedy.

The output has exactly ``sum(durations)`` frames: no EOS, no early stop, no silent cut. Training
(``codeclm.training.valle_dur_task``) pairs each target utterance with a prompt from another
utterance of the same speaker, as at inference; durations at inference come from espeak-ng
scaled to the reference's speaking rate (:mod:`codeclm.tokenizers.align`).
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
from codeclm.lm.conditioning import FusedCondition
from codeclm.lm.config import LMConfig
from codeclm.lm.sampling import check_sampling_params, sample_next
from codeclm.lm.text_encoder import TokenEncoder
from codeclm.lm.transformer import TokenLM
from codeclm.pretrained import SavedConfig, fused_state_dict, load_folder, save_folder
from codeclm.threads import cpu_has_native_bf16

__all__ = ["MODEL_TYPE", "DurValle", "DurValleConfig", "frame_positions"]

MODEL_TYPE = "codeclm-valle-dur"


@dataclass
class DurValleConfig(SavedConfig):
    """Sizes of the duration-guided AR and NAR and their phoneme encoders."""

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "duration-guided VALL-E"

    n_q: int = 6
    card: int = 1024
    vocab_size: int = 128
    dim: int = 256
    num_heads: int = 4
    ar_layers: int = 4
    nar_layers: int = 4
    text_layers: int = 2
    hidden_scale: float = 4.0
    dropout: float = 0.1
    positional: str = "sinusoidal"
    frame_rate: float = 50.0
    max_frames: int = 800  # prompt + target frames
    max_prompt_seconds: float = 5.0  # longer references are cropped
    min_prompt_seconds: float = 1.0  # shorter ones are refused
    max_position: int = 32  # position-in-phoneme / frames-left embeddings (clipped)
    # the pipeline's planning constants (as ValleConfig): frames per phoneme bounds of the durations
    min_frames_per_phoneme: float = 1.0
    max_frames_per_phoneme: float = 12.0

    def __post_init__(self) -> None:
        if self.n_q < 2:
            raise ConfigError(f"valle-dur config: n_q must be >= 2 (AR + NAR), got {self.n_q}")
        if not 0 < self.min_prompt_seconds <= self.max_prompt_seconds:
            raise ConfigError("valle-dur config: need 0 < min_prompt_seconds <= max_prompt_seconds")
        if self.vocab_size < 1 or self.text_layers < 0 or self.max_position < 2:
            raise ConfigError("valle-dur config: vocab_size >= 1, text_layers >= 0 and max_position >= 2 required")
        if self.max_prompt_frames >= self.max_frames:
            raise ConfigError("valle-dur config: max_frames must exceed the prompt's frames")
        self.ar_config()
        self.nar_config()

    def _lm(self, **kw) -> LMConfig:
        return LMConfig(dim=self.dim, num_heads=self.num_heads, hidden_scale=self.hidden_scale,
                        dropout=self.dropout, positional=self.positional, cross_attention=False,
                        pattern="parallel", **kw)

    def ar_config(self) -> LMConfig:  # the embedding's extra row (card) is the start token
        return self._lm(n_q=1, card=self.card, num_layers=self.ar_layers, max_seq_len=self.max_frames + 1)

    def nar_config(self) -> LMConfig:
        return self._lm(n_q=self.n_q, card=self.card, num_layers=self.nar_layers, causal=False,
                        max_seq_len=self.max_frames)

    @property
    def max_prompt_frames(self) -> int:
        return int(self.max_prompt_seconds * self.frame_rate)


def frame_positions(durations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(token index, position in token, frames left in token)`` of each frame, ``[sum(d)]`` each,
    for ``durations [L]`` (frames per token; zero-frame tokens get no frame)."""
    durations = durations.long().clamp(min=0)
    idx = torch.repeat_interleave(torch.arange(durations.shape[0], device=durations.device), durations)
    starts = torch.cumsum(durations, 0) - durations
    pos = torch.arange(idx.shape[0], device=durations.device) - starts[idx]
    left = durations[idx] - pos - 1
    return idx, pos, left


class FrameConditioner(nn.Module):
    """Phoneme tokens + frame alignment -> one ``dim`` vector per frame (prompt frames: ``prompt``)."""

    def __init__(self, c: DurValleConfig) -> None:
        super().__init__()
        self.max_position = c.max_position
        self.text = TokenEncoder(c.vocab_size, c.dim, c.text_layers, c.num_heads, dropout=c.dropout)
        self.pos = nn.Embedding(c.max_position, c.dim)
        self.left = nn.Embedding(c.max_position, c.dim)
        self.prompt = nn.Parameter(torch.zeros(c.dim))
        for emb in (self.pos, self.left):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.prompt, std=0.02)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor,
                left: torch.Tensor) -> torch.Tensor:
        """``tokens/token_mask [B, L]``; ``idx/pos/left [B, T]`` with ``idx < 0`` on prompt (and
        padding) frames -> ``[B, T, dim]``."""
        states, _ = self.text.encode_ids(tokens, token_mask)
        gathered = states.gather(1, idx.clamp(min=0)[..., None].expand(-1, -1, states.shape[-1]))
        m = self.max_position - 1
        x = gathered + self.pos(pos.clamp(0, m)) + self.left(left.clamp(0, m))
        return torch.where((idx >= 0)[..., None], x, self.prompt.to(x.dtype).expand_as(x))


class _LeanDecoder:
    """Batch-``n`` step-by-step decoding of a causal, pre-norm, sinusoidal, cross-attention-free
    :class:`TokenLM` with one codebook, straight on its weights (the per-call work of the
    generic cache paths costs more than the matmuls at this size). Same arithmetic as
    ``TokenLM.forward`` (the tests compare the greedy codes with teacher forcing)."""

    def __init__(self, lm: TokenLM, extra: torch.Tensor) -> None:
        from codeclm.lm.layers import sinusoidal_embedding

        cfg = lm.config
        if not cfg.causal or cfg.cross_attention or cfg.positional != "sinusoidal" or not cfg.norm_first or cfg.n_q != 1:
            raise CodecLMError("the lean decoder needs a causal, pre-norm, sinusoidal, one-codebook LM")
        n, T, _ = extra.shape
        self.lm, self.H, self.hd = lm, cfg.num_heads, cfg.head_dim
        pos = sinusoidal_embedding(torch.arange(T, device=extra.device), cfg.dim, cfg.max_period)
        self.pre = (extra + pos.to(extra.dtype)).contiguous()  # what is added to each step's embedding
        self.k = [extra.new_zeros(n, self.H, T, self.hd) for _ in lm.layers]
        self.v = [extra.new_zeros(n, self.H, T, self.hd) for _ in lm.layers]
        self.emb = lm.emb[0].weight
        self.head = lm.heads[0]

    def __call__(self, codes: torch.Tensor, start: int) -> torch.Tensor:
        """Feed ``codes [n, S]`` at steps ``start .. start + S - 1``; logits ``[n, card]`` of the last."""
        n, S = codes.shape
        x = F.embedding(codes, self.emb) + self.pre[:, start: start + S]
        end = start + S
        for i, layer in enumerate(self.lm.layers):
            a = layer.attn
            h = F.layer_norm(x, layer.norm_attn.normalized_shape, layer.norm_attn.weight, layer.norm_attn.bias,
                             layer.norm_attn.eps)
            q, k, v = a.qkv(h).view(n, S, 3, self.H, self.hd).permute(2, 0, 3, 1, 4)
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]
            if S == 1:
                att = F.scaled_dot_product_attention(q, keys, values)
            elif start == 0:
                att = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            else:
                mask = torch.arange(end, device=x.device)[None, :] <= torch.arange(start, end, device=x.device)[:, None]
                att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + a.out(att.transpose(1, 2).reshape(n, S, -1))
            f = layer.ffn
            h = F.layer_norm(x, layer.norm_ffn.normalized_shape, layer.norm_ffn.weight, layer.norm_ffn.bias,
                             layer.norm_ffn.eps)
            x = x + f[2](F.gelu(f[0](h)))
        x = self.lm.out_norm(x[:, -1])
        return self.head(x)


class DurValle(nn.Module):
    """The duration-guided AR and NAR; ``generate`` makes exactly ``sum(durations)`` frames."""

    def __init__(self, config: DurValleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.ar_cond = FrameConditioner(c)
        self.ar = TokenLM(c.ar_config())
        self.nar_cond = FrameConditioner(c)
        self.nar = TokenLM(c.nar_config())

    # the NAR at inference on CPU under bfloat16 autocast: None (default) where the CPU has native
    # bf16 (AMX / AVX512-BF16; elsewhere emulated bf16 made clones 1.2-1.7x slower than float32),
    # True / False to force it
    nar_bf16: bool | None = None
    # the NAR reads at most this many seconds of the acoustic prompt (its last ones; None: all of it).
    # Training prompts are 1.5-4 s windows (recipe ``valle.prompt_seconds``), references up to
    # ``max_prompt_seconds``; the NAR's cost grows with prompt + target frames at every codebook
    nar_prompt_seconds: float | None = None
    ar_int8 = True  # the AR's decoding steps on CPU with int8 weights (codeclm.lm.quant; False: float32)

    def train(self, mode: bool = True) -> DurValle:
        self.__dict__.pop("_ar_int8", None)  # weights may change: quantise again when decoding next
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to(), .half(): the int8 copy is made again from the new weights
        self.__dict__.pop("_ar_int8", None)
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.__dict__.pop("_ar_int8", None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _decoding_ar(self) -> TokenLM:
        """The AR used step by step: an int8 copy on CPU (memory-bound steps, a quarter of the
        bytes), else the AR itself."""
        from codeclm.lm.quant import int8_available, quantize_int8

        if not (self.ar_int8 and self.device.type == "cpu" and int8_available()):
            return self.ar
        if "_ar_int8" not in self.__dict__:
            self.__dict__["_ar_int8"] = quantize_int8(self.ar)  # not a submodule: never saved
        return self.__dict__["_ar_int8"]

    @property
    def start(self) -> int:
        return self.config.card

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- frame layout ---------------------------------------------------------------------------------
    @staticmethod
    def layout(prompt_frames: list[int], durations: list[torch.Tensor], length: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``idx/pos/left [B, T]`` for sequences ``prompt frames + target frames`` (right-padded to
        ``length``; prompt and padding frames have ``idx = -1``)."""
        rows = [(p, frame_positions(d.cpu())) for p, d in zip(prompt_frames, durations)]
        T = length or max(p + r[0].shape[0] for p, r in rows)
        out = [torch.full((len(rows), T), -1, dtype=torch.long) for _ in range(3)]
        for b, (p, (idx, pos, left)) in enumerate(rows):
            n = idx.shape[0]
            out[0][b, p: p + n], out[1][b, p: p + n], out[2][b, p: p + n] = idx, pos, left
        for t in out[1:]:
            t.clamp_(min=0)
        return tuple(out)

    # -- training losses ------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, durations: list[torch.Tensor],
                prompts: list[torch.Tensor], targets: list[torch.Tensor], levels: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Both losses: ``tokens/token_mask [B, L]`` (target phonemes), ``durations[b] [L_b]``
        (summing to the target's frames), ``prompts[b] [K, Tp_b]``, ``targets[b] [K, Tt_b]``;
        the NAR predicts codebook ``levels[b]``. Returns ``loss, ar_ce, nar_ce, ar_acc, nar_acc``."""
        c, device = self.config, tokens.device
        for d, t in zip(durations, targets):
            if int(d.sum()) != t.shape[1]:
                raise CodecLMError(f"durations sum to {int(d.sum())} frames, the target has {t.shape[1]}")
        P = [p.shape[1] for p in prompts]
        idx, pos, left = (x.to(device) for x in self.layout(P, durations))
        B, T = idx.shape
        # AR over the first codebook of prompt + target
        first = torch.full((B, T), -100, dtype=torch.long, device=device)
        for b, (p, t) in enumerate(zip(prompts, targets)):
            seq = torch.cat([p[0], t[0]]).to(device)
            first[b, : seq.shape[0]] = seq
        inputs = torch.cat([first.new_full((B, 1), self.start), first[:, :-1].clamp(min=0)], 1)
        target = first.clone()
        for b, p in enumerate(P):
            target[b, :p] = -100  # the prompt is given, not predicted
        cond = self.ar_cond(tokens, token_mask, idx, pos, left)
        logits = self.ar(inputs[:, None], FusedCondition(sum=cond))[:, 0]  # [B, T, card]
        ar = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100)
        valid = target >= 0
        ar_acc = ((logits.argmax(-1) == target) & valid).sum() / valid.sum().clamp(min=1)
        # NAR: one unpadded sequence per item
        ncond = self.nar_cond(tokens, token_mask, idx, pos, left)
        losses, hits, count = [], 0, 0
        for b in range(B):
            p, j = P[b], int(levels[b])
            tgt = targets[b][: c.n_q].to(device)
            n = p + tgt.shape[1]
            seq = self.nar_input(prompts[b][: c.n_q].to(device), tgt, j)
            hidden = self.nar.hidden_states(seq[None], FusedCondition(sum=ncond[b: b + 1, :n]))[0, p:]
            lg = self.nar.heads[j](hidden)  # only the head of the level predicted
            losses.append(F.cross_entropy(lg.float(), tgt[j], reduction="sum"))
            hits += int((lg.argmax(-1) == tgt[j]).sum())
            count += tgt.shape[1]
        nar = torch.stack(losses).sum() / max(count, 1)
        nar_acc = torch.tensor(hits / max(count, 1))
        return {"loss": ar + nar, "ar_ce": ar, "nar_ce": nar, "ar_acc": ar_acc.detach(), "nar_acc": nar_acc}

    def nar_input(self, prompt: torch.Tensor, target: torch.Tensor, level: int) -> torch.Tensor:
        known = target.clone()
        known[level:] = self.config.card
        return torch.cat([prompt, known], 1)

    # -- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, durations: torch.Tensor, prompt: torch.Tensor, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 0.0, do_sample: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes ``[K, sum(durations)]`` of the target (one item of :meth:`generate_batch`)."""
        return self.generate_batch([tokens], [durations], prompt, temperature, top_k, top_p, do_sample, [generator])[0]

    @torch.no_grad()
    def generate_batch(self, tokens: list[torch.Tensor], durations: list[torch.Tensor], prompt: torch.Tensor,
                       temperature: float = 1.0, top_k: int = 50, top_p: float = 0.0, do_sample: bool = True,
                       generators: list[torch.Generator | None] | None = None,
                       on_frame: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Codes ``[K, sum(durations[b])]`` per item, all with the acoustic prompt ``prompt [K, Tp]``
        (one AR batch with a KV cache; each row samples with its own generator, so an item's result
        does not depend on the others); the NAR fills codebooks 1 .. K-1 greedily per item."""
        check_sampling_params(temperature, top_k, top_p)
        c, device = self.config, self.device
        n = len(tokens)
        generators = list(generators) if generators is not None else [None] * n
        if n == 0 or len(durations) != n or len(generators) != n:
            raise CodecLMError("generate_batch needs durations and a generator per item")
        if prompt.dim() != 2 or prompt.shape[0] < c.n_q or prompt.shape[1] < 1:
            raise CodecLMError(f"prompt codes must be [>= {c.n_q}, Tp >= 1], got {tuple(prompt.shape)}")
        prompt = prompt[: c.n_q].to(device).long()
        Tp = prompt.shape[1]
        lengths = []
        for tok, d in zip(tokens, durations):
            if tok.dim() != 1 or d.shape != tok.shape:
                raise CodecLMError(f"tokens and durations must be [L] each, got {tuple(tok.shape)} and {tuple(d.shape)}")
            total = int(d.clamp(min=0).sum())
            if total < 1:
                raise CodecLMError("the durations give no frame to generate")
            if Tp + total > c.max_frames:
                raise CodecLMError(f"prompt ({Tp}) + target ({total}) frames exceed the model's {c.max_frames}")
            lengths.append(total)
        L = max(t.shape[0] for t in tokens)
        tok = torch.zeros(n, L, dtype=torch.long, device=device)
        mask = torch.zeros(n, L, dtype=torch.bool, device=device)
        for b, t in enumerate(tokens):
            tok[b, : t.shape[0]], mask[b, : t.shape[0]] = t.to(device), True
        T = Tp + max(lengths)
        idx, pos, left = (x.to(device) for x in self.layout([Tp] * n, [d.clamp(min=0) for d in durations], T))
        cond = self.ar_cond(tok, mask, idx, pos, left)
        first = torch.zeros(n, max(lengths), dtype=torch.long, device=device)
        # KV cache for the whole sequence; step s reads frame s's condition
        step = _LeanDecoder(self._decoding_ar(), cond)
        inp = torch.cat([prompt.new_full((n, 1), self.start), prompt[0][None].expand(n, -1)], 1)
        logits = step(inp, 0)  # [n, card]: frame Tp
        for f in range(max(lengths)):
            code = torch.stack([sample_next(logits[b: b + 1, None], temperature, top_k, top_p, do_sample,
                                            generators[b])[0, 0] for b in range(n)])
            first[:, f] = code
            if on_frame is not None:
                on_frame(f + 1)
            if f + 1 < max(lengths):
                logits = step(code[:, None], Tp + 1 + f)
        return self._fill_nar(tok, mask, (idx, pos, left), prompt, [first[b, :m] for b, m in enumerate(lengths)])

    @torch.no_grad()
    def fill_nar(self, tokens: torch.Tensor, durations: torch.Tensor, prompt: torch.Tensor,
                 first: torch.Tensor) -> torch.Tensor:
        """Codes ``[K, T]`` whose first codebook is the given ``first [T]`` (``T = sum(durations)``)
        and whose others the NAR fills, as :meth:`generate` does after its AR (diagnostics: the NAR
        on a recording's own first codebook)."""
        c, device = self.config, self.device
        prompt = prompt[: c.n_q].to(device).long()
        d = durations.clamp(min=0)
        if int(d.sum()) != first.shape[-1]:
            raise CodecLMError(f"the durations give {int(d.sum())} frames, the first codebook has {first.shape[-1]}")
        layout = tuple(x.to(device) for x in self.layout([prompt.shape[1]], [d]))
        tok = tokens.to(device)[None]
        return self._fill_nar(tok, torch.ones_like(tok, dtype=torch.bool), layout, prompt, [first.to(device).long()])[0]

    def _fill_nar(self, tok, mask, layout, prompt, firsts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Codebooks 1 .. K-1 of each item, greedily, one NAR pass per codebook. Whole sequences
        (compute-bound), in bfloat16 where the CPU has it (autocast); the NAR reads the prompt's last
        ``nar_prompt_seconds`` (prompt frames all carry the same condition vector)."""
        c, device, Tp = self.config, self.device, prompt.shape[1]
        fast = device.type == "cpu" and (cpu_has_native_bf16() if self.nar_bf16 is None else bool(self.nar_bf16))
        Pn = Tp if self.nar_prompt_seconds is None else max(1, min(Tp, int(self.nar_prompt_seconds * c.frame_rate)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            ncond = self.nar_cond(tok, mask, *layout)[:, Tp - Pn:]
            nprompt = prompt[:, Tp - Pn:]
            out = []
            for b, first in enumerate(firsts):
                tgt = prompt.new_full((c.n_q, first.shape[0]), c.card)
                tgt[0] = first
                for j in range(1, c.n_q):
                    hidden = self.nar.hidden_states(self.nar_input(nprompt, tgt, j)[None],
                                                    FusedCondition(sum=ncond[b: b + 1, : Pn + first.shape[0]]))[0, Pn:]
                    tgt[j] = self.nar.heads[j](hidden).float().argmax(-1)
                out.append(tgt)
        return out

    # -- files ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        return save_folder(folder, self.config.to_dict(), fused_state_dict(self), dtype)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> DurValle:
        return load_folder(cls, DurValleConfig, folder).to(device).eval()
