"""The token language model: a decoder-only transformer over K parallel codebooks.

``TokenLM`` reads a pattern sequence ``[B, K, S]`` (see :mod:`codeclm.lm.patterns`) and returns
logits ``[B, K, S, card]``; the logits at step ``s`` are the distribution of step ``s + 1``
(next-token prediction), so a caller feeds a start step of special tokens (id ``card``) first.

Shape of the network (MusicGen's): the K codebook embeddings are summed, sinusoidal positions
are added (or RoPE is applied inside attention), then ``num_layers`` blocks of causal
self-attention, optional cross-attention to a conditioning tensor, and a GELU feed-forward, a
final norm and K linear heads.

Streaming (:mod:`codeclm.streaming`): inside ``with lm.streaming(batch_size):`` each call
processes only the NEW steps. Each self-attention layer owns a KV cache preallocated to
``max_seq_len`` steps (``[B, H, max_seq_len, head_dim]`` for keys and for values) and writes the
new steps in place at its offset, so a step costs the same however long the stream is. The
cross-attention keys/values of the conditioning are computed once and cached as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.errors import CodecLMError, CodesError
from codeclm.lm.config import LMConfig
from codeclm.streaming import StreamingError, StreamingModule

__all__ = [
    "CrossAttention",
    "SelfAttention",
    "TokenLM",
    "TransformerBlock",
    "apply_rope",
    "rope_tables",
    "sinusoidal_embedding",
]


# -- positions ------------------------------------------------------------------------------------
def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """``[S] -> [S, dim]``: ``cat(cos(p * f), sin(p * f))`` with ``f_i = max_period ** (-i / (dim/2 - 1))``.

    The AudioCraft / Hugging Face MusicGen convention (cosines first).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32)
                      * (-math.log(max_period) / max(half - 1, 1)))
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rope_tables(positions: torch.Tensor, head_dim: int, max_period: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin tables ``[S, head_dim]`` for :func:`apply_rope` (rotate-half layout)."""
    inv_freq = max_period ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, S, head_dim]`` by position (GPT-NeoX / Llama "rotate half" RoPE)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


# -- attention ------------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Streaming state of a self-attention layer: preallocated keys/values and the fill offset."""

    max_len: int
    k: torch.Tensor | None = None  # [B, H, max_len, head_dim], allocated on the first call
    v: torch.Tensor | None = None
    offset: int = 0


class SelfAttention(StreamingModule):
    """Causal multi-head self-attention (fused q/k/v projection) with a streaming KV cache."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.max_seq_len = config.num_heads, config.head_dim, config.max_seq_len
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.bias_attn)
        self.out = nn.Linear(config.dim, config.dim, bias=config.bias_attn)

    def _init_streaming_state(self, batch_size: int) -> KVCache:
        return KVCache(max_len=self.max_seq_len)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout = self.dropout if self.training else 0.0
        cache: KVCache | None = self._streaming_state
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            self._check_stream_batch(B)
            start, end = cache.offset, cache.offset + S
            if end > cache.max_len:
                raise StreamingError(f"KV cache full: {end} steps > max_seq_len={cache.max_len}")
            if cache.k is None:
                cache.k = k.new_zeros(B, self.num_heads, cache.max_len, self.head_dim)
                cache.v = torch.zeros_like(cache.k)
            cache.k[:, :, start:end] = k  # written in place: no concatenation, no reallocation
            cache.v[:, :, start:end] = v
            cache.offset = end
            keys, values = cache.k[:, :, :end], cache.v[:, :, :end]
            if S == 1:  # one new step sees every cached step
                out = F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout)
            elif start == 0:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, dropout_p=dropout)
            else:  # several new steps after a prefix: causal mask aligned to the end
                query_pos = torch.arange(start, end, device=x.device)[:, None]
                mask = torch.arange(end, device=x.device)[None, :] <= query_pos
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout)
        return self.out(out.transpose(1, 2).reshape(B, S, D))


class CrossAttention(StreamingModule):
    """Multi-head attention from the sequence to a conditioning tensor ``[B, Tc, dim]``.

    ``cond_mask [B, Tc]`` (True = valid) masks padding; a row with no valid position attends to
    all of them (for the usual all-zero null condition of CFG this equals a fully masked softmax,
    without NaNs). While streaming, the conditioning keys/values are computed on the first call
    and reused while ``cond`` is None; a new ``cond`` replaces them.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.dropout = config.dropout
        self.q = nn.Linear(config.dim, config.dim, bias=config.bias_attn)
        self.kv = nn.Linear(config.dim, 2 * config.dim, bias=config.bias_attn)
        self.out = nn.Linear(config.dim, config.dim, bias=config.bias_attn)

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {}  # "k", "v", "mask" once a conditioning was seen

    def _keys_values(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> dict:
        B, Tc, _ = cond.shape
        k, v = self.kv(cond).view(B, Tc, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = cond_mask | ~cond_mask.any(dim=-1, keepdim=True)
        return {"k": k, "v": v, "mask": mask[:, None, None, :]}  # mask [B, 1, 1, Tc]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, cond_mask: torch.Tensor | None) -> torch.Tensor:
        B, S, D = x.shape
        state = self._streaming_state
        if cond is not None:
            kv = self._keys_values(cond, cond_mask)
            if state is not None:
                state.update(kv)
        elif state:
            kv = state
        else:
            raise CodecLMError("cross-attention needs a conditioning tensor (cond)")
        q = self.q(x).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, kv["k"], kv["v"], attn_mask=kv["mask"], dropout_p=dropout)
        return self.out(out.transpose(1, 2).reshape(B, S, D))


# -- blocks ---------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention and a GELU feed-forward, each residual."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.norm_attn = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = SelfAttention(config)
        self.norm_cross = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.cross_attention else None
        self.cross = CrossAttention(config) if config.cross_attention else None
        self.norm_ffn = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, config.hidden_dim, bias=config.bias_ffn),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.dim, bias=config.bias_ffn),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope=None, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm_attn(x), rope))
            if self.cross is not None:
                x = x + self.drop(self.cross(self.norm_cross(x), cond, cond_mask))
            return x + self.drop(self.ffn(self.norm_ffn(x)))
        x = self.norm_attn(x + self.drop(self.attn(x, rope)))
        if self.cross is not None:
            x = self.norm_cross(x + self.drop(self.cross(x, cond, cond_mask)))
        return self.norm_ffn(x + self.drop(self.ffn(x)))


# -- the model ------------------------------------------------------------------------------------
@dataclass
class _LMStreamState:
    offset: int = 0  # steps already processed: the position of the next step
    cond: torch.Tensor | None = None  # the conditioning the layers' caches were built from
    cond_mask: torch.Tensor | None = None


class TokenLM(StreamingModule):
    """Decoder-only transformer over K codebooks: ``forward(seq [B, K, S]) -> logits [B, K, S, card]``.

    Token ids are in ``[0, card]``; ``card`` is the special (start / empty) token. Logits at step
    ``s`` predict step ``s + 1``. With ``config.cross_attention`` every call takes
    ``cond [B, Tc, cond_dim]`` (and optionally ``cond_mask [B, Tc]``, True = valid); while
    streaming, the first call's conditioning is cached and later calls may omit it.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.ModuleList(nn.Embedding(config.card + 1, config.dim) for _ in range(config.n_q))
        has_proj = config.cross_attention and config.condition_dim != config.dim
        self.cond_proj = nn.Linear(config.condition_dim, config.dim) if has_proj else None
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.norm_first else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(config.dim, config.card, bias=config.bias_heads)
                                   for _ in range(config.n_q))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def special_token(self) -> int:
        return self.config.card

    @property
    def stream_offset(self) -> int:
        """Steps processed so far in the open streaming block (the next step's position)."""
        if self._streaming_state is None:
            raise StreamingError("stream_offset is only defined inside a streaming() block")
        return self._streaming_state.offset

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _init_streaming_state(self, batch_size: int) -> _LMStreamState:
        return _LMStreamState()

    # -- inputs ---------------------------------------------------------------------------------
    def _check_seq(self, seq: torch.Tensor) -> None:
        if seq.dim() != 3 or seq.shape[1] != self.config.n_q:
            raise CodesError(f"lm input must be [B, {self.config.n_q}, S], got {tuple(seq.shape)}")
        if seq.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise CodesError(f"lm input must hold integer token ids, got {seq.dtype}")

    def _condition(self, cond: torch.Tensor | None, cond_mask: torch.Tensor | None,
                   batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Projected conditioning and bool mask for the layers; (None, None) = use their caches."""
        if not self.config.cross_attention:
            if cond is not None:
                raise CodecLMError("this LM has no cross-attention (config.cross_attention=False), but cond was given")
            return None, None
        state: _LMStreamState | None = self._streaming_state
        if state is not None and state.cond is not None and (cond is None or (cond is state.cond and cond_mask is state.cond_mask)):
            return None, None  # same conditioning as the cached one
        if cond is None:
            raise CodecLMError("this LM has cross-attention: pass cond [B, Tc, cond_dim]")
        dim = self.config.condition_dim
        if cond.dim() != 3 or cond.shape[0] != batch or cond.shape[2] != dim:
            raise CodecLMError(f"cond must be [{batch}, Tc, {dim}], got {tuple(cond.shape)}")
        if cond_mask is None:
            mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        elif cond_mask.shape != cond.shape[:2]:
            raise CodecLMError(f"cond_mask must be {tuple(cond.shape[:2])}, got {tuple(cond_mask.shape)}")
        else:
            mask = cond_mask.to(device=cond.device, dtype=torch.bool)
        if state is not None:
            state.cond, state.cond_mask = cond, cond_mask
        projected = self.cond_proj(cond) if self.cond_proj is not None else cond
        # masked positions are zeroed after the projection (MusicGen does the same): a fully
        # masked row (CFG's null condition) then attends to zero keys/values whatever the bias
        projected = projected * mask[..., None].to(projected.dtype)
        return projected, mask

    # -- forward --------------------------------------------------------------------------------
    def hidden_states(self, seq: torch.Tensor, cond: torch.Tensor | None = None,
                      cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final-norm output ``[B, S, dim]`` before the K heads (new steps only while streaming)."""
        self._check_seq(seq)
        B, K, S = seq.shape
        state: _LMStreamState | None = self._streaming_state
        offset = 0
        if state is not None:
            self._check_stream_batch(B)
            offset = state.offset
            if offset + S > self.config.max_seq_len:
                raise StreamingError(f"stream too long: {offset + S} steps > max_seq_len={self.config.max_seq_len}")
        cond, cond_mask = self._condition(cond, cond_mask, B)

        x = self.emb[0](seq[:, 0])
        for k in range(1, K):
            x = x + self.emb[k](seq[:, k])
        positions = torch.arange(offset, offset + S, device=seq.device)
        rope = None
        if self.config.positional == "sinusoidal":
            x = x + sinusoidal_embedding(positions, self.config.dim, self.config.max_period).to(x.dtype)
        else:
            rope = rope_tables(positions, self.config.head_dim, self.config.max_period)
        for layer in self.layers:
            x = layer(x, rope, cond, cond_mask)
        if state is not None:
            state.offset = offset + S
        return self.out_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """K heads: ``[B, S, dim] -> [B, K, S, card]``."""
        return torch.stack([head(hidden) for head in self.heads], dim=1)

    def forward(self, seq: torch.Tensor, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, K, S, card]`` for ``seq [B, K, S]`` (only the new steps while streaming)."""
        return self.logits(self.hidden_states(seq, cond, cond_mask))

    def step(self, seq_new: torch.Tensor, cond: torch.Tensor | None = None,
             cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Streaming convenience: feed the new steps ``[B, K, s]``, get the logits of the step that
        follows them, ``[B, K, card]`` (only the last position goes through the heads)."""
        if not self.is_streaming:
            raise StreamingError("TokenLM.step() needs an open streaming() block")
        return self.logits(self.hidden_states(seq_new, cond, cond_mask)[:, -1:])[:, :, 0]
