"""Transformer building blocks of the token LM: positions (sinusoidal, RoPE), causal or
bidirectional self-attention with a preallocated streaming KV cache (and a static-cache mode),
cross-attention to a conditioning tensor, and the pre-/post-norm block.

:class:`codeclm.lm.transformer.TokenLM` stacks them; the VALL-E stages reuse them through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.errors import CodecLMError
from codeclm.lm.config import LMConfig
from codeclm.streaming import StreamingError, StreamingModule

__all__ = ["CrossAttention", "KVCache", "SelfAttention", "TransformerBlock", "apply_rope", "rope_tables",
           "sinusoidal_embedding"]


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
        self.causal = config.causal
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.bias_attn)
        self.out = nn.Linear(config.dim, config.dim, bias=config.bias_attn)

    def _init_streaming_state(self, batch_size: int) -> KVCache:
        return KVCache(max_len=self.max_seq_len)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                static_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``static_kv = (k_cache, v_cache, positions [S], mask [S, L])``: the static-cache step
        (see :class:`StaticCache`): the new keys/values are written at ``positions`` and the
        queries attend over the whole cache through ``mask``; no shape depends on the position."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout = self.dropout if self.training else 0.0
        cache: KVCache | None = self._streaming_state
        if static_kv is not None:
            k_cache, v_cache, positions, mask = static_kv
            k_cache.index_copy_(2, positions, k.to(k_cache.dtype))  # in place, fixed shapes
            v_cache.index_copy_(2, positions, v.to(v_cache.dtype))
            out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, dropout_p=dropout)
        elif cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=dropout)
        else:
            if not self.causal:
                raise StreamingError("a bidirectional (causal=False) transformer cannot decode step by step")
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

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, cond_mask: torch.Tensor | None, *,
                static_kv: dict | None = None) -> torch.Tensor:
        """``static_kv``: precomputed keys/values/mask (:meth:`_keys_values`) used instead of
        ``cond`` and of the streaming cache (the static-cache step)."""
        B, S, D = x.shape
        state = self._streaming_state
        if static_kv is not None:
            kv = static_kv
        elif cond is not None:
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
                cond_mask: torch.Tensor | None = None, *, static_kv=None, static_cross=None) -> torch.Tensor:
        """``static_kv`` / ``static_cross``: this layer's part of a :class:`StaticCache`."""
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm_attn(x), rope, static_kv=static_kv))
            if self.cross is not None:
                x = x + self.drop(self.cross(self.norm_cross(x), cond, cond_mask, static_kv=static_cross))
            return x + self.drop(self.ffn(self.norm_ffn(x)))
        x = self.norm_attn(x + self.drop(self.attn(x, rope, static_kv=static_kv)))
        if self.cross is not None:
            x = self.norm_cross(x + self.drop(self.cross(x, cond, cond_mask, static_kv=static_cross)))
        return self.norm_ffn(x + self.drop(self.ffn(x)))
