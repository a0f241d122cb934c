"""Autoregressive generation of codec codes with a :class:`TokenLM` and its KV cache.

The pattern's step layout for ``n_frames`` frames is fixed up front (``frame_index [K, S]``).
The LM is fed a start step of special tokens, then one step at a time; the logits of the step
just fed choose the next step. At each step only the positions the pattern marks valid (and not
forced by a prompt) take the sampled tokens; the others keep the special token. Everything per
step is vectorised over the K codebooks and nothing is read back to the host.

Classifier-free guidance runs the conditional and the null batch together (``2B`` rows, the
conditioning cached once in the cross-attention layers) and mixes the logits with
:func:`codeclm.lm.sampling.apply_cfg`.

Two decoders give the same tokens (their logits agree up to float rounding in the attention
sums, so only a near-tie could ever tell them apart):

* the default, eager one: a streaming block whose preallocated KV caches are filled one step
  per call, attention reading the filled part only (:meth:`TokenLM.step`);
* ``static=True``: a :class:`codeclm.lm.transformer.StaticCache` whose shapes do not depend on
  the position (the length is rounded up to a multiple of 64, the conditioning to a multiple of
  16, masked); each step attends over the whole cache with a mask built from the position,
  which is a tensor. ``compile=True`` (implies ``static``) wraps that step in
  ``torch.compile(dynamic=False)``: compiled once per model / batch / length bucket, then reused
  for every step and every later call with the same shapes (past ``torch._dynamo``'s recompile
  limit, new shapes run the step eagerly). If compiling fails (no C++
  compiler, unsupported backend...) a ``RuntimeWarning`` says why and the eager static step is
  used instead (and for the rest of the process, without retrying): the tokens are the same,
  only slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from codeclm.errors import CodecLMError, CodesError
from codeclm.lm.conditioning import FusedCondition
from codeclm.lm.patterns import Pattern
from codeclm.lm.sampling import SamplingError, apply_cfg, sample_next
from codeclm.lm.layers import SelfAttention

_LENGTH_BUCKET = 64  # static cache length: steps rounded up to this (fewer distinct compiled shapes)
_COND_BUCKET = 16  # static cache: conditioning length rounded up to this (padding is masked)
_COMPILED: dict[type, Callable | BaseException] = {}  # compiled static_step per TokenLM class, or why not

__all__ = ["generate_codes", "iter_codes"]


def _pad_time(x: torch.Tensor, length: int, value=0) -> torch.Tensor:
    """Pad dim 1 of ``x [B, T, ...]`` to ``length``."""
    extra = length - x.shape[1]
    if extra <= 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, extra]
    return F.pad(x, pad, value=value)


def _cfg_condition(cond, cond_mask, null_cond, null_mask):
    """Concatenate the condition and the null condition on the batch axis (padded to one Tc)."""
    if cond is None:
        raise CodecLMError("classifier-free guidance needs a condition (cond)")
    if isinstance(cond, FusedCondition):  # null: every part zeros, the cross mask all False
        if null_cond is None:
            zeros = {k: None if v is None else torch.zeros_like(v) for k, v in vars(cond).items()}
            null_cond = FusedCondition(**zeros)
            if null_cond.cross_mask is not None:
                null_cond.cross_mask = null_cond.cross_mask.bool()
        elif not isinstance(null_cond, FusedCondition):
            raise CodecLMError("null_cond must be a FusedCondition like cond")
        return cond.cat(null_cond), None
    if cond_mask is None:
        cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
    if null_cond is None:
        null_cond, null_mask = torch.zeros_like(cond), torch.zeros_like(cond_mask, dtype=torch.bool)
    elif null_mask is None:
        null_mask = torch.ones(null_cond.shape[:2], dtype=torch.bool, device=null_cond.device)
    if null_cond.shape[0] != cond.shape[0] or null_cond.shape[2] != cond.shape[2]:
        raise CodecLMError(f"null_cond must be [{cond.shape[0]}, Tc, {cond.shape[2]}], got {tuple(null_cond.shape)}")
    T = max(cond.shape[1], null_cond.shape[1])
    both = torch.cat([_pad_time(cond, T), _pad_time(null_cond.to(cond.dtype), T)], 0)
    masks = torch.cat([_pad_time(cond_mask.bool(), T, False), _pad_time(null_mask.bool(), T, False)], 0)
    return both, masks


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_condition(cond, cond_mask, multiple: int):
    """Pad the conditioning (zeros) and its mask (False) to a multiple of ``multiple`` positions.

    Equivalent for the LM: masked positions are zeroed after the projection and excluded from
    attention, and a row with no valid position attends uniformly to identical keys/values."""
    if cond is None:
        return cond, cond_mask
    if isinstance(cond, FusedCondition):
        return cond if cond.cross is None else cond.pad_cross(_round_up(cond.cross.shape[1], multiple)), None
    if cond_mask is None:
        cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
    T = _round_up(cond.shape[1], multiple)
    return _pad_time(cond, T), _pad_time(cond_mask.to(device=cond.device, dtype=torch.bool), T, False)


def _warn_no_compile(exc: BaseException) -> None:
    msg = str(exc).strip().splitlines()
    warnings.warn(f"torch.compile of the LM step failed ({type(exc).__name__}: {msg[0] if msg else ''}); "
                  "falling back to the eager static-cache step (same tokens, slower)", RuntimeWarning, stacklevel=4)


def _compiled_step(lm) -> Callable:
    """``step(seq_new, positions, cache)``: the compiled :meth:`TokenLM.static_step` of ``lm``,
    or the eager one (with a ``RuntimeWarning``) when compiling fails."""
    eager, cls = lm.static_step, type(lm)
    fn = _COMPILED.get(cls)
    if isinstance(fn, BaseException):  # failed before in this process: do not pay for it again
        _warn_no_compile(fn)
        return eager
    if fn is None:
        try:
            fn = torch.compile(cls.static_step, dynamic=False)
        except Exception as exc:  # noqa: BLE001 -- e.g. torch.compile unsupported on this Python / platform
            _COMPILED[cls] = exc
            _warn_no_compile(exc)
            return eager
        _COMPILED[cls] = fn
    checked = False

    def step(seq_new, positions, cache):
        nonlocal fn, checked
        if checked:
            return fn(lm, seq_new, positions, cache)
        try:  # the first call compiles (lazily): a failure here means no compiled step
            out = fn(lm, seq_new, positions, cache)
        except Exception as exc:  # noqa: BLE001 -- a compiler failure, unless the eager step fails too
            # the eager step rewrites the same cache slots (idempotent); if it raises as well, the
            # problem is the call, not the compiler: that error propagates and nothing is recorded
            out = cls.static_step(lm, seq_new, positions, cache)
            _COMPILED[cls] = exc
            _warn_no_compile(exc)
            fn = cls.static_step
        checked = True
        return out

    return step


class _StaticDecoder:
    """Prefill + one-step calls over a :class:`StaticCache`; the position lives in a tensor."""

    def __init__(self, lm, rows: int, steps: int, cond, cond_mask, compile: bool) -> None:
        prefix = cond.prepend_len if isinstance(cond, FusedCondition) else 0
        length = min(lm.config.max_seq_len - prefix, _round_up(steps, _LENGTH_BUCKET))
        cond, cond_mask = _pad_condition(cond, cond_mask, _COND_BUCKET)
        self.lm = lm
        self.cache = lm.new_static_cache(rows, length, cond, cond_mask)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.cache.arange.device)
        self.step_fn = _compiled_step(lm) if compile else lm.static_step

    def prefill(self, inp: torch.Tensor) -> torch.Tensor:
        inp = inp.contiguous()  # fixed strides whatever the sequence length (no recompilation)
        n = inp.shape[2]
        if n == 1:  # the start step alone: the same shapes as a decoding step
            out = self.step_fn(inp, self.pos, self.cache)
        else:
            out = self.lm.static_step(inp, self.cache.arange[:n], self.cache)
        self.pos.fill_(n)
        return out

    def step(self, inp: torch.Tensor) -> torch.Tensor:
        out = self.step_fn(inp.contiguous(), self.pos, self.cache)
        self.pos.add_(1)  # in place: no new tensor, no host value
        return out


@contextmanager
def _cache_length(lm, steps: int):
    """Preallocate the KV caches to the ``steps`` this generation needs, not ``max_seq_len``."""
    layers = [m for m in lm.modules() if isinstance(m, SelfAttention)]
    saved = [m.max_seq_len for m in layers]
    for m in layers:
        m.max_seq_len = min(m.max_seq_len, max(1, steps))
    try:
        yield
    finally:
        for m, n in zip(layers, saved):
            m.max_seq_len = n


@torch.no_grad()
def iter_codes(lm, pattern: Pattern, batch: int, n_frames: int, cond: torch.Tensor | None = None,
               cond_mask: torch.Tensor | None = None, null_cond: torch.Tensor | None = None,
               null_mask: torch.Tensor | None = None, guidance_scale: float = 1.0, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 0.0, do_sample: bool = True,
               generator: torch.Generator | None = None, prompt_codes: torch.Tensor | None = None,
               on_step: Callable[[int, int], None] | None = None, *, static: bool = False,
               compile: bool = False, logits_processor=None, stopping_criteria=None,
               pad_token_id: int | None = None) -> Iterator[torch.Tensor]:
    """:func:`generate_codes` as an iterator of newly completed frames ``[B, K, n]``, in order.

    Runs under ``torch.no_grad()``; the chunks cover all ``n_frames``. Closing the iterator early
    closes the LM's streaming block. ``static`` / ``compile``: the static-cache decoder, eager or
    compiled (see the module docstring); the default is the streaming one.

    ``logits_processor(input_ids [B, K, s], scores [B, K, V]) -> scores`` (e.g. a
    :class:`codeclm.lm.logits.LogitsProcessorList`) edits each step's scores after guidance and
    before sampling. ``stopping_criteria(input_ids [B, K, s + 1], scores) -> done [B]``: a done
    row's later tokens are ``pad_token_id`` (default: the special token) and the loop ends when
    every row is done; the chunks then stop at that step (fewer than ``n_frames``; this test is
    the only host read per step, and only with criteria). ``generator`` may be a list of one
    ``torch.Generator`` per row: row ``b`` then draws from its own (its tokens do not depend on
    the other rows' sampling, as if it were generated alone).
    """
    cfg = lm.config
    K, special = cfg.n_q, cfg.card
    if pattern.n_q != K:
        raise CodecLMError(f"pattern is for {pattern.n_q} codebooks, the LM has {K}")
    if batch < 1 or n_frames < 1:
        raise CodecLMError(f"batch and n_frames must be >= 1, got {batch} and {n_frames}")
    if guidance_scale < 0:
        raise SamplingError(f"cfg scale must be >= 0, got {guidance_scale}")
    device = next(lm.parameters()).device
    frame_index, step_index = pattern.indices(n_frames, device)  # [K, S], [K, T]
    S = frame_index.shape[1]
    n_prepend = cond.prepend_len if isinstance(cond, FusedCondition) else 0  # prepended condition tokens
    if S + n_prepend > cfg.max_seq_len:
        raise CodecLMError(f"{n_frames} frames need {S} steps{f' after {n_prepend} prepended' if n_prepend else ''}, "
                           f"more than the LM's max_seq_len={cfg.max_seq_len}")
    valid = frame_index >= 0
    seq = torch.full((batch, K, S), special, dtype=torch.long, device=device)

    # -- prompt: force the pattern positions of its frames -----------------------------------
    n_prompt = 0
    free = valid
    if prompt_codes is not None:
        if prompt_codes.dim() != 3 or prompt_codes.shape[0] != batch or prompt_codes.shape[1] != K:
            raise CodesError(f"prompt_codes must be [{batch}, {K}, P], got {tuple(prompt_codes.shape)}")
        n_prompt = prompt_codes.shape[2]
        if n_prompt > n_frames:
            raise CodesError(f"prompt has {n_prompt} frames, more than n_frames={n_frames}")
        if n_prompt and (int(prompt_codes.min()) < 0 or int(prompt_codes.max()) >= special):
            raise CodesError(f"prompt_codes must be in [0, {special})")
        if n_prompt:
            forced = valid & (frame_index < n_prompt)
            src = torch.gather(prompt_codes.to(device=device, dtype=torch.long), 2,
                               frame_index.clamp(0, n_prompt - 1).expand(batch, K, S))
            seq = torch.where(forced, src, seq)
            free = valid & ~forced
    free_any = free.any(dim=0).tolist()  # per step: does it sample anything (host list, once)
    first = next((s for s, f in enumerate(free_any) if f), S)

    # -- conditioning ---------------------------------------------------------------------------
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        cond_in, mask_in = _cfg_condition(cond, cond_mask, null_cond, null_mask)
    else:
        cond_in, mask_in = cond, cond_mask
    rows = 2 * batch if use_cfg else batch
    start = torch.full((rows, K, 1), special, dtype=torch.long, device=device)

    def expand(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], 0) if use_cfg else x

    # -- frames as they complete ----------------------------------------------------------------
    emitted = 0
    prefix = pattern.prefix_stable
    # frame t is complete after step max_k step_index[k, t] (host list, computed once)
    done_after = step_index.max(dim=0).values.tolist() if prefix else None

    def completed(upto_step: int) -> torch.Tensor | None:
        nonlocal emitted
        if prefix:
            n = emitted
            while n < n_frames and done_after[n] <= upto_step:
                n += 1
        else:
            n = n_frames if upto_step >= S - 1 else emitted
        if n <= emitted:
            return None
        out = torch.gather(seq, 2, step_index[:, emitted:n].expand(batch, K, n - emitted))
        emitted = n
        return out

    if first > 0:
        chunk = completed(first - 1)
        if chunk is not None:
            yield chunk
    last = S - 1  # the last step whose frames are yielded (earlier when every row stopped)
    finished = None
    if stopping_criteria is not None:
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        pad = torch.tensor(special if pad_token_id is None else int(pad_token_id), device=device)
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise CodecLMError(f"got {len(generator)} generators for a batch of {batch}")
    lm.eval()
    with ExitStack() as stack:
        if first < S and (static or compile):
            decoder = _StaticDecoder(lm, rows, S, cond_in, mask_in, compile)
            prefill, step = decoder.prefill, decoder.step
        else:
            stack.enter_context(_cache_length(lm, S + n_prepend))
            stack.enter_context(lm.streaming(rows))
            prefill, step = (lambda inp: lm.step(inp, cond_in, mask_in)), lm.step
        if first < S:
            logits = prefill(torch.cat([start, expand(seq[:, :, :first])], 2))
            for s in range(first, S):
                logits = logits.float()
                if use_cfg:
                    logits = apply_cfg(logits[:batch], logits[batch:], guidance_scale)
                if logits_processor is not None:
                    logits = logits_processor(seq[:, :, :s], logits)
                if isinstance(generator, (list, tuple)):  # one generator per row
                    tokens = torch.cat([sample_next(logits[b:b + 1], temperature, top_k, top_p, do_sample, g)
                                        for b, g in enumerate(generator)], 0)
                else:
                    tokens = sample_next(logits, temperature, top_k, top_p, do_sample, generator)
                if finished is not None:  # rows done before this step keep the pad token
                    tokens = torch.where(finished[:, None], pad, tokens)
                seq[:, :, s] = torch.where(free[:, s], tokens, seq[:, :, s])
                if finished is not None:
                    finished |= stopping_criteria(seq[:, :, :s + 1], logits)
                    if bool(finished.all()):
                        last = s
                if on_step is not None:
                    on_step(s + 1 - first, S - first)
                chunk = completed(s)
                if chunk is not None:
                    yield chunk
                if last < S - 1:
                    break
                if s + 1 < S:
                    logits = step(expand(seq[:, :, s:s + 1]))
    chunk = completed(last)
    if chunk is not None:
        yield chunk


@torch.no_grad()
def generate_codes(lm, pattern: Pattern, batch: int, n_frames: int, cond: torch.Tensor | None = None,
                   cond_mask: torch.Tensor | None = None, null_cond: torch.Tensor | None = None,
                   null_mask: torch.Tensor | None = None, guidance_scale: float = 1.0, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 0.0, do_sample: bool = True,
                   generator: torch.Generator | None = None, prompt_codes: torch.Tensor | None = None,
                   on_frames: Callable[[torch.Tensor], None] | None = None,
                   on_step: Callable[[int, int], None] | None = None, *, static: bool = False,
                   compile: bool = False, logits_processor=None, stopping_criteria=None,
                   pad_token_id: int | None = None) -> torch.Tensor:
    """Generate ``n_frames`` frames of codes ``[batch, K, n_frames]`` (long).

    ``cond [B, Tc, D]`` / ``cond_mask [B, Tc]``: cross-attention conditioning (LMs with
    ``cross_attention``), or ``cond`` a :class:`~codeclm.lm.conditioning.FusedCondition` (cross,
    sum and prepend parts; ``null_cond`` then one too, default: every part zeros). ``guidance_scale != 1`` enables classifier-free guidance against
    ``null_cond`` / ``null_mask`` (default: zeros and an all-False mask, MusicGen's null).
    ``prompt_codes [B, K, P]`` (P <= n_frames) are forced as the first P frames (continuation);
    they are fed in one prefill call. ``on_frames(codes [B, K, n])`` is called with each run of
    newly completed frames, in order, covering all ``n_frames`` (prompt frames included);
    ``on_step(done, total)`` after every generated step (progress bars).
    ``static=True`` decodes with a fixed-shape cache, ``compile=True`` also compiles its step
    with ``torch.compile`` (falling back to the eager static step with a ``RuntimeWarning`` if
    that fails); both give the tokens of the default decoder. ``logits_processor``,
    ``stopping_criteria``, ``pad_token_id`` and a list of per-row generators: as in :func:`iter_codes`.
    """
    chunks = []
    for chunk in iter_codes(lm, pattern, batch, n_frames, cond, cond_mask, null_cond, null_mask, guidance_scale,
                            temperature, top_k, top_p, do_sample, generator, prompt_codes, on_step,
                            static=static, compile=compile, logits_processor=logits_processor,
                            stopping_criteria=stopping_criteria, pad_token_id=pad_token_id):
        chunks.append(chunk)
        if on_frames is not None:
            on_frames(chunk)
    return torch.cat(chunks, 2)
