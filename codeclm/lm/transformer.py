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

Per decoding step nothing loops over the K codebooks in Python: the K embedding tables (and the
K head weights / biases) are kept as consecutive slices of one tensor each (the parameters keep
their names ``emb.{k}.weight`` / ``heads.{k}.weight``), so under ``torch.no_grad()`` the K
lookups are one ``embedding_bag`` with per-codebook offsets and the K heads one matmul. With
gradients enabled (training) the per-codebook modules are used as such.

Static cache (:meth:`TokenLM.new_static_cache`, :meth:`TokenLM.static_step`): an alternative to
streaming whose tensor shapes do not depend on the position. Each step writes its keys/values
at ``positions`` (a tensor) and attends over the whole preallocated cache with a mask built from
those positions, so the step can be wrapped by ``torch.compile(dynamic=False)`` once and reused
for every step (:func:`codeclm.lm.generate.iter_codes` with ``static=True`` / ``compile=True``).

Conditioning: ``cond`` is either the cross-attention memory ``[B, Tc, cond_dim]`` (with
``cond_mask``) or a :class:`codeclm.lm.conditioning.FusedCondition` (what a
:class:`~codeclm.lm.conditioning.ConditioningProvider` fuses): its ``cross`` part is that memory,
its ``sum`` part ``[B, S, dim]`` is added to the embeddings of input steps ``0..S-1`` and its
``prepend`` tokens ``[B, P, dim]`` go before the first step (positions ``0..P-1``; their outputs
are dropped; while streaming they are fed with the first call and count in ``stream_offset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.errors import CodecLMError, CodesError
from codeclm.lm.conditioning import FusedCondition
from codeclm.lm.config import LMConfig
from codeclm.lm.layers import (  # noqa: F401  (re-exported: the LM's building blocks)
    CrossAttention,
    KVCache,
    SelfAttention,
    TransformerBlock,
    apply_rope,
    rope_tables,
    sinusoidal_embedding,
)
from codeclm.streaming import StreamingError, StreamingModule

__all__ = [
    "CrossAttention",
    "SelfAttention",
    "StaticCache",
    "TokenLM",
    "TransformerBlock",
    "apply_rope",
    "rope_tables",
    "sinusoidal_embedding",
]


# -- the K codebooks as one tensor ------------------------------------------------------------------
def _stacked_view(params: list[torch.Tensor | None]) -> torch.Tensor | None:
    """A detached ``[K, *shape]`` view over K same-shaped tensors that are consecutive slices of
    one storage (what :meth:`TokenLM._stack_codebook_params` arranges), else None."""
    first = params[0]
    if first is None or first.device.type == "meta" or not first.is_contiguous():
        return None
    n, size, base = first.numel(), first.element_size(), first.data_ptr()
    storage = first.untyped_storage().data_ptr()
    for k, p in enumerate(params):
        if (p is None or p.shape != first.shape or p.dtype != first.dtype or p.device != first.device
                or not p.is_contiguous() or p.data_ptr() != base + k * n * size
                or p.untyped_storage().data_ptr() != storage):
            return None
    return first.detach().as_strided((len(params), *first.shape), (n, *first.stride()))


class _CodebookTables(NamedTuple):
    """Flat views used by the fused (no-grad) paths; a None field falls back to the K modules."""

    emb: torch.Tensor | None  # [K * (card + 1), dim]
    offsets: torch.Tensor | None  # [K, 1]: k * (card + 1)
    head_w: torch.Tensor | None  # [K * card, dim]
    head_b: torch.Tensor | None  # [K * card] (bias_heads) or None


def _restack_after_load(module: TokenLM, incompatible_keys) -> None:
    module._stack_codebook_params()  # load_state_dict(assign=True) replaces the parameters


# -- the model ------------------------------------------------------------------------------------
@dataclass
class _LMStreamState:
    offset: int = 0  # steps already processed: the position of the next step
    cond: torch.Tensor | None = None  # the conditioning the layers' caches were built from
    cond_mask: torch.Tensor | None = None
    tables: _CodebookTables | None = None  # stacked views, looked up once per stream (no grad)
    fused: FusedCondition | None = None  # the fused conditioning of the stream (its sum / prepend parts)
    prefix_len: int = 0  # prepended positions before step 0


@dataclass
class StaticCache:
    """Fixed-shape decoding state for :meth:`TokenLM.static_step` (made by
    :meth:`TokenLM.new_static_cache`; no streaming block is involved).

    ``keys`` / ``values``: per layer ``[B, H, length, head_dim]``, zero-initialised and written
    in place at the fed positions; ``cross``: per layer the conditioning's keys, values and mask
    (None without cross-attention); ``tables``: the stacked embedding / head views;
    ``arange``: ``[length]`` positions, compared with the fed positions to build the mask.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    cross: list[dict] | None
    tables: _CodebookTables
    arange: torch.Tensor
    sum: torch.Tensor | None = None  # [B, length, dim]: a fused condition's per-step sum part
    prefix_len: int = 0  # prepended positions (already in the cache) before step 0

    @property
    def length(self) -> int:
        return int(self.arange.shape[0]) - self.prefix_len


class TokenLM(StreamingModule):
    """Decoder-only transformer over K codebooks: ``forward(seq [B, K, S]) -> logits [B, K, S, card]``.

    Token ids are in ``[0, card]``; ``card`` is the special (start / empty) token. Logits at step
    ``s`` predict step ``s + 1``. With ``config.cross_attention`` every call takes
    ``cond [B, Tc, cond_dim]`` (and optionally ``cond_mask [B, Tc]``, True = valid); while
    streaming, the first call's conditioning is cached and later calls may omit it.

    The K embedding tables (and the K head weights / biases) live in one tensor each, as
    consecutive slices; the parameters keep their names and shapes. This layout is restored
    after ``.to()`` / ``.half()``, ``copy.deepcopy``, unpickling and ``load_state_dict(assign=True)``;
    if it is broken some other way the per-codebook modules are used (same results, slower).
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
        self._stack_codebook_params()
        self.register_load_state_dict_post_hook(_restack_after_load)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # -- stacked per-codebook parameters ---------------------------------------------------------
    @torch.no_grad()
    def _stack_codebook_params(self) -> None:
        """Make the K embedding weights (and the K head weights, biases) consecutive slices of one
        tensor each, so the fused paths read them without a copy. Values are unchanged."""
        groups = [[m.weight for m in self.emb], [m.weight for m in self.heads]]
        if self.config.bias_heads:
            groups.append([m.bias for m in self.heads])
        for params in groups:
            if _stacked_view(params) is not None:
                continue
            if any(p.device.type == "meta" or p.device != params[0].device or p.dtype != params[0].dtype
                   for p in params):
                continue  # nothing to stack (meta) or split across devices: keep the modules' path
            stack = torch.stack([p.detach() for p in params])
            for p, view in zip(params, stack.unbind(0)):
                p.data = view

    def _apply(self, fn, recurse=True):  # .to(), .half(), .cuda()... convert each parameter alone
        out = super()._apply(fn, recurse)
        self._stack_codebook_params()
        return out

    def __setstate__(self, state) -> None:  # copy.deepcopy and unpickling copy each parameter alone
        super().__setstate__(state)
        self._stack_codebook_params()

    def _codebook_tables(self) -> _CodebookTables | None:
        """Flat views of the stacked parameters for the fused paths; None while gradients are
        enabled (training goes through the K modules so that every parameter gets its gradient)."""
        if torch.is_grad_enabled():
            return None
        cfg = self.config
        emb = _stacked_view([m.weight for m in self.emb])
        head_w = _stacked_view([m.weight for m in self.heads])
        head_b = _stacked_view([m.bias for m in self.heads]) if cfg.bias_heads else None
        if cfg.bias_heads and head_b is None:
            head_w = None
        offsets = None
        if emb is not None:
            offsets = torch.arange(cfg.n_q, device=emb.device).mul_(cfg.card + 1).view(cfg.n_q, 1)
        return _CodebookTables(
            emb=None if emb is None else emb.flatten(0, 1), offsets=offsets,
            head_w=None if head_w is None else head_w.flatten(0, 1),
            head_b=None if head_b is None else head_b.flatten(0, 1))

    def _tables(self) -> _CodebookTables | None:
        """:meth:`_codebook_tables`, looked up once per streaming block."""
        state: _LMStreamState | None = self._streaming_state
        if state is None or torch.is_grad_enabled():
            return self._codebook_tables()
        if state.tables is None:
            state.tables = self._codebook_tables()
        return state.tables

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

    def _project_condition(self, cond: torch.Tensor | None, cond_mask: torch.Tensor | None,
                           batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked, projected conditioning ``[B, Tc, dim]`` (masked positions zeroed) and bool mask."""
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
        projected = self.cond_proj(cond) if self.cond_proj is not None else cond
        # masked positions are zeroed after the projection (MusicGen does the same): a fully
        # masked row (CFG's null condition) then attends to zero keys/values whatever the bias
        projected = projected * mask[..., None].to(projected.dtype)
        return projected, mask

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
        projected, mask = self._project_condition(cond, cond_mask, batch)
        if state is not None:
            state.cond, state.cond_mask = cond, cond_mask
        return projected, mask

    # -- shared pieces --------------------------------------------------------------------------
    def _embed(self, seq: torch.Tensor, tables: _CodebookTables | None) -> torch.Tensor:
        """Sum of the K codebook embeddings: ``[B, K, S] -> [B, S, dim]``."""
        B, K, S = seq.shape
        if tables is None or tables.emb is None:
            x = self.emb[0](seq[:, 0])
            for k in range(1, K):
                x = x + self.emb[k](seq[:, k])
            return x
        # one lookup in the stacked tables: row k * (card + 1) + id, summed over k in order;
        # an id outside [0, card] is sent out of the table (an index error, as nn.Embedding
        # gives) instead of into the neighbouring codebook's rows
        seq = seq.long()
        bad = (seq < 0) | (seq > self.config.card)
        idx = (seq + tables.offsets).masked_fill_(bad, tables.emb.shape[0])
        return F.embedding_bag(idx.transpose(1, 2).reshape(B * S, K), tables.emb, mode="sum").view(B, S, -1)

    def _add_positions(self, x: torch.Tensor, positions: torch.Tensor):
        """Sinusoidal positions added to ``x`` or RoPE tables for attention: ``(x, rope)``."""
        if self.config.positional == "sinusoidal":
            return x + sinusoidal_embedding(positions, self.config.dim, self.config.max_period).to(x.dtype), None
        return x, rope_tables(positions, self.config.head_dim, self.config.max_period)

    def _head_logits(self, hidden: torch.Tensor, tables: _CodebookTables | None) -> torch.Tensor:
        """K heads: ``[B, S, dim] -> [B, K, S, card]`` (one matmul over the stacked heads)."""
        if tables is None or tables.head_w is None:
            return torch.stack([head(hidden) for head in self.heads], dim=1)
        B, S, _ = hidden.shape
        K, card = self.config.n_q, self.config.card
        out = F.linear(hidden, tables.head_w, tables.head_b).view(B, S, K, card).transpose(1, 2)
        return out.contiguous()  # no copy when S == 1

    # -- forward --------------------------------------------------------------------------------
    @staticmethod
    def _unfuse(cond, cond_mask) -> tuple[FusedCondition | None, torch.Tensor | None, torch.Tensor | None]:
        """``(fused or None, cross memory, its mask)`` of a call's ``cond`` / ``cond_mask``."""
        if not isinstance(cond, FusedCondition):
            return None, cond, cond_mask
        if cond_mask is not None:
            raise CodecLMError("a FusedCondition carries its own cross_mask: do not pass cond_mask")
        return cond, cond.cross, cond.cross_mask

    def _check_fused(self, fused: FusedCondition | None, batch: int) -> None:
        if fused is None:
            return
        for name in ("prepend", "sum"):
            part = getattr(fused, name)
            if part is not None and (part.dim() != 3 or part.shape[0] != batch or part.shape[2] != self.config.dim):
                raise CodecLMError(f"the {name} condition must be [{batch}, T, {self.config.dim}], "
                                   f"got {tuple(part.shape)}")
        if fused.prepend is not None and not self.config.causal:
            raise CodecLMError("prepend conditions need a causal LM")

    @staticmethod
    def _steps_of(part: torch.Tensor, start: int, n: int) -> torch.Tensor:
        """``part[:, start:start + n]``, zero-padded past its end."""
        out = part[:, start:start + n]
        if out.shape[1] < n:
            out = F.pad(out, (0, 0, 0, n - out.shape[1]))
        return out

    def hidden_states(self, seq: torch.Tensor, cond: torch.Tensor | FusedCondition | None = None,
                      cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final-norm output ``[B, S, dim]`` before the K heads (new steps only while streaming)."""
        self._check_seq(seq)
        B, _, S = seq.shape
        fused, cond, cond_mask = self._unfuse(cond, cond_mask)
        self._check_fused(fused, B)
        state: _LMStreamState | None = self._streaming_state
        offset = 0
        if state is not None:
            self._check_stream_batch(B)
            offset = state.offset
            if fused is not None:
                state.fused = fused
            fused = state.fused
        prefix = fused.prepend if fused is not None and offset == 0 else None
        P = 0 if prefix is None else prefix.shape[1]
        if state is not None and offset + P + S > self.config.max_seq_len:
            raise StreamingError(f"stream too long: {offset + P + S} steps > max_seq_len={self.config.max_seq_len}")
        cond, cond_mask = self._condition(cond, cond_mask, B)

        x = self._embed(seq, self._tables())
        if fused is not None and fused.sum is not None:
            start = offset - (state.prefix_len if state is not None else 0)
            x = x + self._steps_of(fused.sum, start, S).to(x.dtype)
        if P:
            x = torch.cat([prefix.to(x.dtype), x], 1)
        x, rope = self._add_positions(x, torch.arange(offset, offset + P + S, device=seq.device))
        for layer in self.layers:
            x = layer(x, rope, cond, cond_mask)
        if P:
            x = x[:, P:]
        if state is not None:
            state.offset = offset + P + S
            if P:
                state.prefix_len = P
        return self.out_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """K heads: ``[B, S, dim] -> [B, K, S, card]``."""
        return self._head_logits(hidden, self._tables())

    def forward(self, seq: torch.Tensor, cond: torch.Tensor | FusedCondition | None = None,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, K, S, card]`` for ``seq [B, K, S]`` (only the new steps while streaming)."""
        return self.logits(self.hidden_states(seq, cond, cond_mask))

    def step(self, seq_new: torch.Tensor, cond: torch.Tensor | FusedCondition | None = None,
             cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Streaming convenience: feed the new steps ``[B, K, s]``, get the logits of the step that
        follows them, ``[B, K, card]`` (only the last position goes through the heads)."""
        if not self.is_streaming:
            raise StreamingError("TokenLM.step() needs an open streaming() block")
        return self.logits(self.hidden_states(seq_new, cond, cond_mask)[:, -1:])[:, :, 0]

    # -- static cache ---------------------------------------------------------------------------
    @torch.no_grad()
    def new_static_cache(self, batch: int, length: int, cond: torch.Tensor | FusedCondition | None = None,
                         cond_mask: torch.Tensor | None = None) -> StaticCache:
        """Preallocate a :class:`StaticCache` of ``length`` positions for ``batch`` rows.

        The conditioning (LMs with cross-attention) is projected and turned into per-layer
        keys/values here, once; a fused condition's prepended tokens are fed into the cache here
        too (``length`` counts the steps after them). Decoding is then :meth:`static_step` calls
        (inference only: call them under ``torch.no_grad()``), with no streaming block.
        """
        cfg = self.config
        fused, cond, cond_mask = self._unfuse(cond, cond_mask)
        self._check_fused(fused, batch)
        P = 0 if fused is None else fused.prepend_len
        if not cfg.causal:
            raise StreamingError("a bidirectional (causal=False) transformer cannot decode step by step")
        if batch < 1 or not 1 <= length <= cfg.max_seq_len - P:
            raise StreamingError(f"static cache: need batch >= 1 and 1 <= length <= max_seq_len={cfg.max_seq_len}"
                                 f"{f' - {P} prepended' if P else ''}, got batch={batch}, length={length}")
        cross = None
        if cfg.cross_attention:
            projected, mask = self._project_condition(cond, cond_mask, batch)
            cross = [layer.cross._keys_values(projected, mask) for layer in self.layers]
        elif cond is not None:
            raise CodecLMError("this LM has no cross-attention (config.cross_attention=False), but cond was given")
        weight = self.layers[0].attn.qkv.weight if self.layers else self.emb[0].weight
        shape = (batch, cfg.num_heads, P + length, cfg.head_dim)
        keys = [weight.new_zeros(shape) for _ in self.layers]
        values = [weight.new_zeros(shape) for _ in self.layers]
        summed = None
        if fused is not None and fused.sum is not None:
            summed = self._steps_of(fused.sum, 0, length).to(device=weight.device, dtype=weight.dtype)
        cache = StaticCache(keys=keys, values=values, cross=cross, tables=self._codebook_tables(),
                            arange=torch.arange(P + length, device=weight.device), sum=summed)
        if P:  # the prepended tokens at positions 0..P-1
            self._static_layers(fused.prepend.to(weight.dtype), cache.arange[:P], cache)
            cache.prefix_len = P
        return cache

    def _static_layers(self, x: torch.Tensor, positions: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        x, rope = self._add_positions(x, positions)
        mask = cache.arange[None, :] <= positions[:, None]  # [n, length]
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, static_kv=(cache.keys[i], cache.values[i], positions, mask),
                      static_cross=None if cache.cross is None else cache.cross[i])
        return x

    def static_step(self, seq_new: torch.Tensor, positions: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Feed ``seq_new [B, K, n]`` at ``positions [n]`` (a long tensor on the model's device),
        get the logits ``[B, K, card]`` of the step that follows the last of them.

        The keys/values are written into ``cache`` at ``positions`` and every query attends over
        the whole cache with the mask ``arange(length) <= position``, so no shape depends on the
        position: with a fixed ``n`` (1 per decoding step) the call can be wrapped by
        ``torch.compile(..., dynamic=False)`` and compiled once. Feeding positions ``0..n-1`` in
        one call is the prefill. The caller keeps the positions in range (no host check here).
        """
        self._check_seq(seq_new)
        if cache.keys and seq_new.shape[0] != cache.keys[0].shape[0]:
            raise StreamingError(f"static cache is for batch {cache.keys[0].shape[0]}, got {seq_new.shape[0]}")
        x = self._embed(seq_new, cache.tables)
        if cache.sum is not None:
            x = x + cache.sum.index_select(1, positions).to(x.dtype)
        if cache.prefix_len:
            positions = positions + cache.prefix_len
        x = self._static_layers(x, positions, cache)
        return self._head_logits(self.out_norm(x[:, -1:]), cache.tables)[:, :, 0]
