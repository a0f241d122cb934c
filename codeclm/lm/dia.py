"""Dia (Nari Labs' dialogue TTS) on the token-LM core: a byte-level text encoder, an audio decoder
over K = 9 DAC codebooks in a delay pattern, classifier-free guidance.

Shape of the network (``transformers``' ``DiaForConditionalGeneration``, weight for weight):

* encoder: a byte embedding (256 ids; ``[S1]`` = 1, ``[S2]`` = 2), pre-norm blocks of
  bidirectional self-attention (RoPE, grouped-query heads) and a SiLU-gated feed-forward, RMSNorm;
* decoder: the K codebook embeddings summed (one table, per-codebook offsets), pre-norm blocks of
  causal self-attention (RoPE, grouped-query heads, a preallocated KV cache on codeclm's
  streaming protocol), cross-attention over the encoder states (keys/values computed once) and
  the gated feed-forward, a final RMSNorm and one head giving the K distributions.

Attention has no ``1/sqrt(head_dim)`` scaling (Dia's own convention). The codebook layout is
codeclm's :class:`~codeclm.lm.patterns.DelayPattern` with Dia's delays ``[0, 8, 9, ..., 15]``
where frame 0 is an all-BOS frame: step ``s`` of codebook ``k`` holds frame ``s - delays[k]``
(BOS before frame 0). The token ids of the decoder vocabulary: codes ``0 .. eos_id - 1``, then
EOS, PAD, BOS.

Generation (:meth:`DiaModel.generate_steps`) follows ``transformers``' Dia generation rule for
rule, so greedy decoding gives its tokens: CFG as ``cond + scale * (cond - uncond)`` where the
unconditional text is all zero bytes with the same mask, the guided scores optionally cut to
their top-k and the *conditional* logits kept there; EOS only on codebook 0 (forced when it is the
best token, removed otherwise); after codebook 0 ends, codebook k is forced to EOS ``delays[k]``
steps later and every row ends in PAD; EOS is forced at ``max_new_tokens - max(delays) - 1``
steps. Sampling (top-k, top-p, then temperature, as transformers orders them) uses codeclm's
exponential-race sampler with a seeded ``torch.Generator``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.errors import CodecLMError, CodesError, ConfigError
from codeclm.lm.layers import KVCache, apply_rope
from codeclm.lm.patterns import DelayPattern
from codeclm.lm.sampling import check_sampling_params, top_k_filter, top_p_filter
from codeclm.pretrained import SavedConfig, load_folder, save_folder
from codeclm.streaming import StreamingError, StreamingModule

__all__ = ["DIA_DELAYS", "DiaConfig", "DiaModel", "DiaOutput", "encode_text"]

MODEL_TYPE = "codeclm-dia"
DIA_DELAYS = [0, 8, 9, 10, 11, 12, 13, 14, 15]
ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}
_SPECIAL_TEXT = re.compile(r"(\[S1\]|\[S2\]|<pad>)")
_SPECIAL_IDS = {"<pad>": 0, "[S1]": 1, "[S2]": 2}


def encode_text(text: str) -> list[int]:
    """Dia's byte tokenizer: UTF-8 bytes, with ``[S1]`` -> 1, ``[S2]`` -> 2 and ``<pad>`` -> 0."""
    ids: list[int] = []
    for part in _SPECIAL_TEXT.split(text):
        if part in _SPECIAL_IDS:
            ids.append(_SPECIAL_IDS[part])
        elif part:
            ids.extend(part.encode("utf-8"))
    return ids


@dataclass
class DiaConfig(SavedConfig):
    """Dia's encoder-decoder. Defaults are ``nari-labs/Dia-1.6B``'s."""

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "Dia model"

    # text encoder
    text_vocab_size: int = 256
    enc_dim: int = 1024
    enc_layers: int = 12
    enc_heads: int = 16
    enc_kv_heads: int = 16
    enc_head_dim: int = 128
    enc_ffn_dim: int = 4096
    enc_max_len: int = 1024
    enc_rope_theta: float = 10_000.0
    enc_norm_eps: float = 1e-5
    # audio decoder
    dim: int = 2048
    num_layers: int = 18
    num_heads: int = 16
    num_kv_heads: int = 4
    head_dim: int = 128
    ffn_dim: int = 8192
    cross_heads: int = 16
    cross_kv_heads: int = 16
    cross_head_dim: int = 128
    max_seq_len: int = 3072
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    activation: str = "silu"
    # codebooks
    n_q: int = 9
    vocab_size: int = 1028
    eos_id: int = 1024
    pad_id: int = 1025
    bos_id: int = 1026
    delays: list[int] = field(default_factory=lambda: list(DIA_DELAYS))

    def __post_init__(self) -> None:
        self.delays = [int(d) for d in self.delays]
        self.validate()

    @property
    def card(self) -> int:
        """Codebook entries (the audio codes are ``0 .. card - 1``)."""
        return self.eos_id

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"dia config: {msg}")

        for name in ("text_vocab_size", "enc_dim", "enc_layers", "enc_heads", "enc_kv_heads", "enc_head_dim",
                     "enc_ffn_dim", "enc_max_len", "dim", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "ffn_dim", "cross_heads", "cross_kv_heads", "cross_head_dim", "max_seq_len", "n_q"):
            if int(getattr(self, name)) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for heads, kv in (("enc_heads", "enc_kv_heads"), ("num_heads", "num_kv_heads"),
                          ("cross_heads", "cross_kv_heads")):
            if getattr(self, heads) % getattr(self, kv):
                raise bad(f"{heads} ({getattr(self, heads)}) must be a multiple of {kv} ({getattr(self, kv)})")
        for name in ("enc_head_dim", "head_dim"):
            if getattr(self, name) % 2:
                raise bad(f"RoPE needs an even {name}, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise bad(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if len(self.delays) != self.n_q or min(self.delays) < 0 or self.delays[0] != 0:
            raise bad(f"need {self.n_q} non-negative delays starting with 0 (codebook 0 carries EOS), "
                      f"got {self.delays}")
        if not 1 <= self.eos_id < self.vocab_size or len({self.eos_id, self.pad_id, self.bos_id}) != 3 \
                or min(self.pad_id, self.bos_id) <= self.eos_id or max(self.pad_id, self.bos_id) >= self.vocab_size:
            raise bad(f"need eos_id < pad_id, bos_id < vocab_size (distinct), got eos={self.eos_id}, "
                      f"pad={self.pad_id}, bos={self.bos_id}, vocab_size={self.vocab_size}")
        if self.enc_rope_theta <= 1 or self.rope_theta <= 1 or self.norm_eps <= 0 or self.enc_norm_eps <= 0:
            raise bad("rope thetas must be > 1 and norm eps > 0")


# -- layers -----------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``weight * x / rms(x)``, computed in float32 (T5 / Dia)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class GatedMLP(nn.Module):
    """``down(act(gate) * up)`` with gate and up as one projection (``gate_up``)."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(up * self.act(gate))


def rope_tables(length: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[length, head_dim]`` (rotate-half layout), computed as transformers' default RoPE."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.arange(length, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scale-1 attention of one query step ``q [B, H, 1, hd]`` over ``k, v [B, KV, L, hd]`` (``H`` a
    multiple of ``KV``), the query heads of a group batched against their shared keys: two small
    matmuls instead of SDPA's kernel launch, which dominates at one step. ``mask [B, 1, 1, L]``."""
    B, H, _, hd = q.shape
    KV, L = k.shape[1], k.shape[2]
    G = H // KV
    # [B * KV, ...] views (a KV-cache prefix is one too: no copy of the cache per step)
    scores = torch.bmm(q.reshape(B * KV, G, hd), k.reshape(B * KV, L, hd).transpose(1, 2)).view(B, KV, G, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(-1).to(v.dtype).view(B * KV, G, L)
    return torch.bmm(probs, v.reshape(B * KV, L, hd)).view(B, H, 1, hd)


class GQASelfAttention(StreamingModule):
    """Self-attention with grouped-query heads, RoPE and scale 1 (fused q/k/v projection).

    While streaming (causal only) the keys/values of each call are written in place into a
    :class:`~codeclm.lm.layers.KVCache` preallocated to ``max_len`` steps.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, causal: bool, max_len: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.causal, self.max_len = heads, kv_heads, head_dim, causal, max_len
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)

    def _init_streaming_state(self, batch_size: int) -> KVCache:
        return KVCache(max_len=self.max_len)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, S, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = apply_rope(q.view(B, S, H, hd).transpose(1, 2), *rope)
        k = apply_rope(k.view(B, S, KV, hd).transpose(1, 2), *rope)
        v = v.view(B, S, KV, hd).transpose(1, 2)
        gqa = H != KV
        cache: KVCache | None = self._streaming_state
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and S > 1,
                                                 scale=1.0, enable_gqa=gqa)
        else:
            if not self.causal:
                raise StreamingError("a bidirectional attention cannot decode step by step")
            self._check_stream_batch(B)
            start, end = cache.offset, cache.offset + S
            if end > cache.max_len:
                raise StreamingError(f"KV cache full: {end} steps > {cache.max_len}")
            if cache.k is None:
                cache.k = k.new_zeros(B, KV, cache.max_len, hd)
                cache.v = torch.zeros_like(cache.k)
            cache.k[:, :, start:end] = k
            cache.v[:, :, start:end] = v
            cache.offset = end
            keys, values = cache.k[:, :, :end], cache.v[:, :, :end]
            if S == 1:
                out = _one_query_attention(q, keys, values, None)
            elif start == 0:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=1.0, enable_gqa=gqa)
            else:
                causal = torch.arange(end, device=x.device)[None, :] <= torch.arange(start, end, device=x.device)[:, None]
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal, scale=1.0, enable_gqa=gqa)
        return self.out(out.transpose(1, 2).reshape(B, S, H * hd))


@dataclass
class CrossKV:
    """One decoder layer's keys/values of the encoder states and the key mask (None: all valid)."""

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


class GQACrossAttention(nn.Module):
    """Attention from the decoder to the encoder states (no RoPE, scale 1, grouped-query heads)."""

    def __init__(self, dim: int, cond_dim: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim, bias=False)
        self.kv = nn.Linear(cond_dim, 2 * kv_heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)

    def keys_values(self, cond: torch.Tensor, mask: torch.Tensor | None) -> CrossKV:
        B, T, _ = cond.shape
        k, v = self.kv(cond).view(B, T, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return CrossKV(k, v, mask)

    def forward(self, x: torch.Tensor, kv: CrossKV) -> torch.Tensor:
        B, S, _ = x.shape
        q = self.q(x).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        if S == 1:
            out = _one_query_attention(q, kv.k, kv.v, kv.mask)
        else:
            out = F.scaled_dot_product_attention(q, kv.k, kv.v, attn_mask=kv.mask, scale=1.0,
                                                 enable_gqa=self.heads != self.kv_heads)
        return self.out(out.transpose(1, 2).reshape(B, S, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, c: DiaConfig) -> None:
        super().__init__()
        self.norm_attn = RMSNorm(c.enc_dim, c.enc_norm_eps)
        self.attn = GQASelfAttention(c.enc_dim, c.enc_heads, c.enc_kv_heads, c.enc_head_dim, False, c.enc_max_len)
        self.norm_ffn = RMSNorm(c.enc_dim, c.enc_norm_eps)
        self.ffn = GatedMLP(c.enc_dim, c.enc_ffn_dim, c.activation)

    def forward(self, x, rope, mask):
        x = x + self.attn(self.norm_attn(x), rope, mask)
        return x + self.ffn(self.norm_ffn(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: DiaConfig) -> None:
        super().__init__()
        self.norm_attn = RMSNorm(c.dim, c.norm_eps)
        self.attn = GQASelfAttention(c.dim, c.num_heads, c.num_kv_heads, c.head_dim, True, c.max_seq_len)
        self.norm_cross = RMSNorm(c.dim, c.norm_eps)
        self.cross = GQACrossAttention(c.dim, c.enc_dim, c.cross_heads, c.cross_kv_heads, c.cross_head_dim)
        self.norm_ffn = RMSNorm(c.dim, c.norm_eps)
        self.ffn = GatedMLP(c.dim, c.ffn_dim, c.activation)

    def forward(self, x, rope, cross: CrossKV):
        x = x + self.attn(self.norm_attn(x), rope)
        x = x + self.cross(self.norm_cross(x), cross)
        return x + self.ffn(self.norm_ffn(x))


class DiaEncoder(nn.Module):
    def __init__(self, c: DiaConfig) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.text_vocab_size, c.enc_dim)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.enc_layers))
        self.norm = RMSNorm(c.enc_dim, c.enc_norm_eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids [B, T]`` (right-padded, ``mask [B, T]`` True = valid) -> states ``[B, T, enc_dim]``."""
        x = self.embed(ids)
        rope = rope_tables(ids.shape[1], self.config.enc_head_dim, self.config.enc_rope_theta, ids.device)
        key_mask = _key_mask(mask)
        for layer in self.layers:
            x = layer(x, rope, key_mask)
        return self.norm(x)


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, T]`` validity -> an SDPA key mask ``[B, 1, 1, T]``, or None when nothing is padded."""
    if mask is None:
        return None
    mask = mask.bool()
    if bool(mask.all()):
        return None
    return mask[:, None, None, :]


@dataclass
class _DecoderState:
    offset: int = 0


class DiaDecoder(StreamingModule):
    """The audio decoder; inside ``streaming(rows)`` each call feeds only the new steps."""

    def __init__(self, c: DiaConfig) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.n_q * c.vocab_size, c.dim)  # codebook k: rows k * vocab_size + id
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.head = nn.Linear(c.dim, c.n_q * c.vocab_size, bias=False)
        self.register_buffer("offsets", torch.arange(c.n_q).mul_(c.vocab_size).view(c.n_q, 1), persistent=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def _init_streaming_state(self, batch_size: int) -> _DecoderState:
        return _DecoderState()

    def rope(self, start: int, end: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if self._rope is None or self._rope[0].shape[0] < end or self._rope[0].device != torch.device(device):
            n = max(end, c.max_seq_len)
            self._rope = rope_tables(n, c.head_dim, c.rope_theta, device)
        return self._rope[0][start:end], self._rope[1][start:end]

    def cross_keys_values(self, states: torch.Tensor, mask: torch.Tensor | None) -> list[CrossKV]:
        key_mask = _key_mask(mask)
        return [layer.cross.keys_values(states, key_mask) for layer in self.layers]

    def forward(self, tokens: torch.Tensor, cross: list[CrossKV], last_only: bool = False) -> torch.Tensor:
        """``tokens [B, K, S]`` -> logits ``[B, K, S, vocab_size]`` (``[B, K, vocab_size]`` of the last
        step with ``last_only``)."""
        c = self.config
        if tokens.dim() != 3 or tokens.shape[1] != c.n_q:
            raise CodesError(f"dia decoder input must be [B, {c.n_q}, S], got {tuple(tokens.shape)}")
        B, K, S = tokens.shape
        state: _DecoderState | None = self._streaming_state
        start = 0 if state is None else state.offset
        if start + S > c.max_seq_len and state is not None:
            raise StreamingError(f"stream too long: {start + S} steps > max_seq_len={c.max_seq_len}")
        idx = (tokens.long() + self.offsets).transpose(1, 2).reshape(B * S, K)
        x = F.embedding_bag(idx, self.embed.weight, mode="sum").view(B, S, c.dim)
        rope = self.rope(start, start + S, tokens.device)
        for layer, kv in zip(self.layers, cross):
            x = layer(x, rope, kv)
        if state is not None:
            state.offset = start + S
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.norm(x)).view(B, x.shape[1], K, c.vocab_size).transpose(1, 2)
        return logits[:, :, 0] if last_only else logits


@dataclass
class DiaOutput:
    """What :meth:`DiaModel.generate_steps` returns."""

    steps: torch.Tensor  # [B, K, L]: the delayed decoder sequence (prompt included), as transformers returns it
    prompt_steps: int  # P: steps of the BOS frame + the audio prompt
    codes: torch.Tensor  # [B, K, F]: new frames in codec order (delays reverted), -1 past a row's length
    lengths: list[int]  # frames per row


class DiaModel(nn.Module):
    """Dia's encoder, decoder and head; :meth:`generate_steps` is the decoding loop."""

    def __init__(self, config: DiaConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = DiaEncoder(config)
        self.decoder = DiaDecoder(config)
        self.pattern = DelayPattern(config.n_q, config.delays)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        self._decode_layout()

    @torch.no_grad()
    def _decode_layout(self) -> None:
        """Store the weight of every widening linear layer (out > in features: q/k/v, gate/up, the
        head) as the transpose of a contiguous ``[in, out]`` tensor. Same parameter, same values and
        names; ``F.linear`` then multiplies the few decoding rows by the contiguous ``[in, out]``
        matrix, which BLAS does several times faster than the ``[out, in]`` layout at batch 1-2
        (measured in ``benchmarks/dia_speed.py``). ``load_state_dict`` copies in place and keeps it."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.out_features > m.in_features and m.weight.is_contiguous():
                m.weight.data = m.weight.data.t().contiguous().t()

    def _apply(self, fn, recurse=True):  # .to() / .half() may hand back contiguous weights
        out = super()._apply(fn, recurse)
        self._decode_layout()
        return out

    # -- folders ----------------------------------------------------------------------------------
    def save_pretrained(self, folder, dtype: torch.dtype | None = None):
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        return save_folder(folder, self.config.to_dict(), state, dtype)

    @classmethod
    def from_pretrained(cls, folder) -> DiaModel:
        return load_folder(cls, DiaConfig, folder).eval()

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, K, S, vocab_size]`` for decoder ``tokens [B, K, S]``."""
        states = self.encoder(text_ids, text_mask)
        return self.decoder(tokens, self.decoder.cross_keys_values(states, text_mask))

    # -- generation -------------------------------------------------------------------------------
    def _check_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        if text_ids.dim() != 2 or text_ids.shape[1] < 1:
            raise CodecLMError(f"text ids must be [B, T] with T >= 1, got {tuple(text_ids.shape)}")
        if text_ids.shape[1] > c.enc_max_len:
            raise CodecLMError(f"the text is {text_ids.shape[1]} bytes; this model reads at most {c.enc_max_len}")
        if int(text_ids.min()) < 0 or int(text_ids.max()) >= c.text_vocab_size:
            raise CodecLMError(f"text ids must be in [0, {c.text_vocab_size})")
        if text_mask is None:
            return torch.ones_like(text_ids, dtype=torch.bool)
        if text_mask.shape != text_ids.shape:
            raise CodecLMError(f"text_mask must be {tuple(text_ids.shape)}, got {tuple(text_mask.shape)}")
        return text_mask.to(device=text_ids.device, dtype=torch.bool)

    def _prefix(self, batch: int, prompt: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(values [B, K, P + max_delay], forced [K, P + max_delay], P)``: the delayed BOS frame and
        prompt frames, and where they force the sequence (the rest is generated)."""
        c = self.config
        if prompt is None:
            prompt = torch.zeros(batch, c.n_q, 0, dtype=torch.long, device=device)
        if prompt.dim() == 2:
            prompt = prompt[None]
        if prompt.dim() != 3 or prompt.shape[1] != c.n_q:
            raise CodesError(f"audio prompt codes must be [{c.n_q}, T] or [B, {c.n_q}, T], got {tuple(prompt.shape)}")
        if prompt.shape[0] == 1 and batch > 1:
            prompt = prompt.expand(batch, -1, -1)
        if prompt.shape[0] != batch:
            raise CodesError(f"audio prompt codes are for batch {prompt.shape[0]}, the text for {batch}")
        prompt = prompt.to(device=device, dtype=torch.long)
        if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= c.card):
            raise CodesError(f"audio prompt codes must be in [0, {c.card})")
        frames = torch.cat([torch.full((batch, c.n_q, 1), c.bos_id, dtype=torch.long, device=device), prompt], 2)
        P = frames.shape[2]
        values, _ = self.pattern.build(frames, c.bos_id)  # [B, K, P + max_delay]; BOS before frame 0
        frame_index = self.pattern.indices(P, device)[0]
        steps = torch.arange(values.shape[2], device=device)
        delays = torch.tensor(c.delays, device=device)[:, None]
        forced = (frame_index >= 0) | (steps[None, :] < delays)  # prompt frames and the BOS lead-in
        return values, forced, P

    @torch.no_grad()
    def generate_steps(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None,
                       prompt: torch.Tensor | None = None, max_new_tokens: int = 256,
                       guidance_scale: float | None = 3.0, top_k: int | None = 50, top_p: float | None = None,
                       temperature: float = 1.0, do_sample: bool = False,
                       generator: torch.Generator | None = None,
                       on_step: Callable[[int, int], None] | None = None) -> DiaOutput:
        """Decode from text ids ``[B, T]`` (+ an audio prompt ``[K, Tp]`` / ``[B, K, Tp]`` of codes).

        ``max_new_tokens`` decoder steps at most (as in transformers: EOS is forced so that the
        last codebook ends within them, so they hold ``max_new_tokens - max(delays) - 1`` frames at
        most). ``guidance_scale`` None or 1: no CFG. ``top_k`` (None / 0: off) filters the guided
        scores (transformers' ``guidance_top_k``, its ``top_k`` default is 50) and, when sampling,
        the logits; ``top_p`` and ``temperature`` apply when sampling.
        """
        c = self.config
        device = self.device
        text_ids = text_ids.to(device)
        text_mask = self._check_text(text_ids, text_mask)
        B, K, V, eos, pad = text_ids.shape[0], c.n_q, c.vocab_size, c.eos_id, c.pad_id
        top_k = int(top_k or 0)
        top_p = float(top_p or 0.0)
        check_sampling_params(temperature, top_k, top_p)
        use_cfg = guidance_scale is not None and float(guidance_scale) != 1.0
        if use_cfg and float(guidance_scale) < 0:
            raise CodecLMError(f"guidance_scale must be >= 0, got {guidance_scale}")
        values, forced, P = self._prefix(B, prompt, device)
        if max_new_tokens < c.max_delay + 2:
            raise CodecLMError(f"max_new_tokens must be >= {c.max_delay + 2} (max delay + 2), got {max_new_tokens}")
        L = P + int(max_new_tokens)
        if L > c.max_seq_len:
            raise CodecLMError(f"{P} prompt steps + {max_new_tokens} new ones exceed the model's "
                               f"max_seq_len={c.max_seq_len}")
        n_forced = values.shape[2]
        seq = torch.full((B, K, L), pad, dtype=torch.long, device=device)
        seq[:, :, :P] = values[:, :, :P]
        forced_full = torch.zeros(K, L, dtype=torch.bool, device=device)
        forced_full[:, :n_forced] = forced
        values_full = seq.clone()
        values_full[:, :, :n_forced] = values

        # -- encoder (and CFG's null text: zero bytes under the same mask) -----------------------
        if use_cfg:
            ids = torch.cat([text_ids, torch.zeros_like(text_ids)], 0)
            mask = torch.cat([text_mask, text_mask], 0)
        else:
            ids, mask = text_ids, text_mask
        states = self.encoder(ids, mask)
        cross = self.decoder.cross_keys_values(states, mask)
        rows = ids.shape[0]

        def expand(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x], 0) if use_cfg else x

        delays = torch.tensor(c.delays, device=device)[None, :].expand(B, K).clone()
        active = torch.zeros(B, dtype=torch.bool, device=device)
        finished = torch.zeros(B, K, dtype=torch.bool, device=device)
        max_gen = L - c.max_delay - 1  # the step at which EOS is forced on codebook 0
        neg_inf = float("-inf")
        total = L - P
        end = L
        self.eval()
        with self.decoder.streaming(rows):
            for layer in self.decoder.layers:
                layer.attn._streaming_state.max_len = L
            logits = self.decoder(expand(seq[:, :, :P]), cross, last_only=True)
            for s in range(P, L):
                scores = logits.float()
                if use_cfg:
                    cond, uncond = scores[:B], scores[B:]
                    scores = cond + (cond - uncond) * float(guidance_scale)
                    if top_k:
                        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(
                            -1, scores.topk(min(top_k, V), dim=-1).indices, True)
                        scores = cond.masked_fill(~keep, neg_inf)
                if do_sample and temperature > 0:
                    scores = top_p_filter(top_k_filter(scores, top_k), top_p)
                    if temperature != 1.0:
                        scores = scores / temperature
                scores = self._eos_rules(scores)
                # EOS delay: once codebook 0 ends (or the length runs out), codebook k ends delays[k] later
                active |= scores[:, 0].argmax(-1) == eos
                if s == max_gen:
                    active.fill_(True)
                force = active[:, None] & (delays == 0)
                if bool(force.any()):
                    scores = torch.where(force[..., None], torch.full_like(scores, neg_inf), scores)
                    scores[..., eos] = torch.where(force, 0.0, scores[..., eos])
                delays -= active[:, None].long()
                if do_sample and temperature > 0:
                    probs = scores.softmax(-1)
                    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
                    tokens = (probs / race.clamp_(min=torch.finfo(probs.dtype).tiny)).argmax(-1)
                else:
                    tokens = scores.argmax(-1)
                tokens = torch.where(finished, pad, tokens)
                finished |= tokens == eos
                seq[:, :, s] = torch.where(forced_full[:, s], values_full[:, :, s], tokens)
                if on_step is not None:
                    on_step(s + 1 - P, total)
                if bool(finished.all()):
                    end = s + 1
                    break
                if s + 1 < L:
                    logits = self.decoder(expand(seq[:, :, s:s + 1]), cross, last_only=True)
        seq = seq[:, :, :end]
        return self._frames(seq, P)

    def _eos_rules(self, scores: torch.Tensor) -> torch.Tensor:
        """Only codebook 0 may end (EOS; no PAD/BOS anywhere); EOS alone when it is codebook 0's best
        token, removed otherwise (transformers' ``DiaEOSChannelFilterLogitsProcessor``)."""
        eos = self.config.eos_id
        scores = scores.clone()
        scores[:, 1:, eos:] = float("-inf")
        scores[:, 0, eos + 1:] = float("-inf")
        best_is_eos = scores.argmax(-1) == eos  # [B, K]
        col = torch.arange(scores.shape[-1], device=scores.device)
        drop = torch.where(best_is_eos[..., None], col < eos, col == eos)
        return scores.masked_fill(drop, float("-inf"))

    def _frames(self, seq: torch.Tensor, P: int) -> DiaOutput:
        """The new frames in codec order: transformers' ``DiaProcessor.batch_decode`` cut
        (from the prompt's end to the step before codebook 0's EOS)."""
        c = self.config
        B, K, L = seq.shape
        codes, _ = self.pattern.revert(seq, num_frames=L, special_token=-1)  # [B, K, L]
        ends = (L - (seq[:, 0] == c.pad_id).sum(-1) - 1).tolist()
        lengths = [max(0, e - P) for e in ends]
        n = max(lengths, default=0)
        out = torch.full((B, K, n), -1, dtype=torch.long, device=seq.device)
        for b, length in enumerate(lengths):
            out[b, :, :length] = codes[b, :, P:P + length]
        return DiaOutput(steps=seq, prompt_steps=P, codes=out, lengths=lengths)
