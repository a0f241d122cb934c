"""Codebook interleaving patterns: how K parallel codebooks become one sequence of steps.

A codec gives codes ``[B, K, T]`` (K codebooks per frame, T frames). A token LM predicts one
*step* at a time, and a step may hold several codebooks. A pattern says, for every step, which
(frame ``t``, codebook ``q``) pairs it holds (AudioCraft's ``codebooks_patterns.py`` idea).

Convention: codebook ``q`` always lives in row ``q`` of the sequence ``[B, K, S]``, and a row holds
at most one frame per step. A pattern is therefore fully described by one index tensor
``frame_index [K, S]``: the frame held by row ``k`` at step ``s``, or ``-1`` (no token: the
position is filled with the special token). Building and reverting are a single ``gather`` with
that tensor (or with its inverse ``step_index [K, T]``), cached per (T, device): no Python loop
runs per call.

Patterns here have no initial "start" step: the LM is fed a special start step itself and its
logits at step ``s`` predict step ``s + 1`` (see :class:`codeclm.lm.transformer.TokenLM`).

Layouts (K=3, T=4; ``tq`` = frame t of codebook q, ``.`` = special token)::

    delay     step: 0  1  2  3  4  5          parallel  step: 0  1  2  3
       q=0        00 10 20 30  .  .                q=0      00 10 20 30
       q=1         . 01 11 21 31  .                q=1      01 11 21 31
       q=2         .  . 02 12 22 32                q=2      02 12 22 32

    flatten   step: 0  1  2  3  4  5 ... 11   valle     step: 0  1  2  3  4  5  6  7
       q=0        00  .  . 10  .  . ...  .         q=0      00 10 20 30  .  .  .  .
       q=1         . 01  .  . 11  . ...  .         q=1       .  .  .  . 01 11 21 31
       q=2         .  . 02  .  . 12 ... 32         q=2       .  .  .  . 02 12 22 32
"""

from __future__ import annotations

import torch

from codeclm.errors import CodesError, ConfigError

__all__ = [
    "PATTERNS",
    "DelayPattern",
    "FlattenPattern",
    "ParallelPattern",
    "Pattern",
    "VallePattern",
    "get_pattern",
]

_CACHE_SIZE = 64  # (T, device) index tables kept per pattern


class Pattern:
    """Base class: subclasses define :meth:`num_steps`, :meth:`frames_for_steps` and
    :meth:`_frame_index`; everything else (build, revert, masks, layouts) is shared."""

    name = "pattern"
    #: True when the layout of T frames is a prefix of the layout of T+1 frames, so a sequence
    #: can be generated open-ended, step by step, without knowing T in advance.
    prefix_stable = True

    def __init__(self, n_q: int) -> None:
        if n_q < 1:
            raise ConfigError(f"{self.name} pattern: n_q must be >= 1, got {n_q}")
        self.n_q = int(n_q)
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q})"

    # -- to define in subclasses ------------------------------------------------------------
    def num_steps(self, num_frames: int) -> int:
        """Sequence steps needed to hold ``num_frames`` complete frames."""
        raise NotImplementedError

    def frames_for_steps(self, num_steps: int) -> int:
        """Complete frames (all K codebooks present) in a sequence of ``num_steps`` steps.

        For prefix-stable patterns this holds for any prefix of a longer sequence; for
        :class:`VallePattern` it assumes the whole layout (``num_steps == num_steps(T)``).
        """
        raise NotImplementedError

    def _frame_index(self, num_frames: int) -> torch.Tensor:
        """``[K, num_steps(T)]`` long tensor: frame held by row k at step s, or -1 (CPU)."""
        raise NotImplementedError

    # -- cached index tables ------------------------------------------------------------------
    def indices(self, num_frames: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(frame_index [K, S], step_index [K, T])`` for T frames, cached per (T, device).

        ``frame_index[k, s]`` is the frame at row k, step s (-1: none); ``step_index[k, t]`` is
        the step that holds codebook k of frame t. Each (k, t) sits at exactly one step.
        """
        device = torch.device(device)
        key = (int(num_frames), str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if num_frames < 0:
            raise CodesError(f"{self.name} pattern: num_frames must be >= 0, got {num_frames}")
        frame = self._frame_index(num_frames)
        K, S = frame.shape
        assert K == self.n_q and S == self.num_steps(num_frames), "pattern layout has the wrong shape"
        valid = frame >= 0
        # invert: step_index[k, frame[k, s]] = s for every valid (k, s)
        step = torch.full((K, num_frames + 1), -1, dtype=torch.long)  # column T is a trash bin
        steps = torch.arange(S).expand(K, S)
        step.scatter_(1, torch.where(valid, frame, num_frames), steps)
        step = step[:, :num_frames].contiguous()
        counts = torch.zeros(K, num_frames + 1, dtype=torch.long).scatter_add_(
            1, torch.where(valid, frame, num_frames), torch.ones_like(frame))
        assert bool((counts[:, :num_frames] == 1).all()), "pattern must place every (k, t) exactly once"
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        out = (frame.to(device), step.to(device))
        self._cache[key] = out
        return out

    def mask(self, num_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[K, num_steps(T)]`` bool: positions that hold a token (the rest are special)."""
        return self.indices(num_frames, device)[0] >= 0

    def layout(self, num_frames: int) -> list[list[tuple[int, int]]]:
        """The pattern as AudioCraft writes it: for each step, the list of (t, q) it holds."""
        frame = self.indices(num_frames)[0]
        return [[(int(frame[q, s]), q) for q in range(self.n_q) if frame[q, s] >= 0]
                for s in range(frame.shape[1])]

    # -- build / revert -----------------------------------------------------------------------
    def _check_rows(self, x: torch.Tensor, what: str) -> None:
        if x.dim() < 3 or x.shape[1] != self.n_q:
            raise CodesError(f"{self.name} pattern: {what} must be [B, {self.n_q}, T, ...], got {tuple(x.shape)}")

    def build(self, codes: torch.Tensor, special_token: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleave ``codes [B, K, T, ...]`` into ``(seq [B, K, S, ...], mask [K, S])``.

        Positions that hold no token are ``special_token``; ``mask`` is True where a token is.
        Trailing dimensions (e.g. embeddings) are carried along unchanged.
        """
        self._check_rows(codes, "codes")
        frame, _ = self.indices(codes.shape[2], codes.device)
        valid = frame >= 0
        seq = _gather_steps(codes, frame.clamp(min=0))
        fill = torch.full((), special_token, dtype=codes.dtype, device=codes.device)
        seq = torch.where(_expand_like(valid, seq), seq, fill)
        return seq, valid

    def revert(self, seq: torch.Tensor, num_frames: int | None = None,
               special_token: float = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo :meth:`build`: ``seq [B, K, S, ...]`` -> ``(codes [B, K, T, ...], mask [K, T])``.

        ``num_frames`` defaults to :meth:`frames_for_steps` (complete frames only). Asking for
        more frames than ``seq`` completes is allowed (a partly generated sequence): codebooks
        whose step lies beyond ``S`` are ``special_token`` and False in ``mask``. Works on
        logits too (``[B, K, S, card]``), with e.g. ``special_token=float('nan')``.
        """
        self._check_rows(seq, "sequence")
        S = seq.shape[2]
        T = self.frames_for_steps(S) if num_frames is None else int(num_frames)
        _, step = self.indices(T, seq.device)
        present = step < S
        if S == 0:
            seq = torch.zeros(*seq.shape[:2], 1, *seq.shape[3:], dtype=seq.dtype, device=seq.device)
        codes = _gather_steps(seq, step.clamp(max=max(S - 1, 0)))
        fill = torch.full((), special_token, dtype=seq.dtype, device=seq.device)
        codes = torch.where(_expand_like(present, codes), codes, fill)
        return codes, present


def _expand_like(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mask [K, N]`` broadcast to ``x [B, K, N, ...]``."""
    return mask.view(1, *mask.shape, *([1] * (x.dim() - 3)))


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, k, n, ...] = x[b, k, index[k, n], ...]`` for ``x [B, K, M, ...]``, ``index [K, N]``."""
    B, K = x.shape[:2]
    idx = index.view(1, K, -1, *([1] * (x.dim() - 3))).expand(B, K, index.shape[1], *x.shape[3:])
    return torch.gather(x, 2, idx)


class DelayPattern(Pattern):
    """MusicGen's delay pattern: codebook q is shifted right by ``delays[q]`` steps (default q).

    All codebooks are predicted in parallel at each step, but codebook q of frame t is predicted
    after the coarser codebooks of that frame. ``S = T + max(delays)``; S steps hold
    ``S - max(delays)`` complete frames.
    """

    name = "delay"

    def __init__(self, n_q: int, delays: list[int] | None = None) -> None:
        super().__init__(n_q)
        delays = list(range(n_q)) if delays is None else [int(d) for d in delays]
        if len(delays) != n_q or min(delays) < 0:
            raise ConfigError(f"{self.name} pattern: need {n_q} non-negative delays, got {delays}")
        self.delays = delays
        self.max_delay = max(delays)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q}, delays={self.delays})"

    def num_steps(self, num_frames: int) -> int:
        return num_frames + self.max_delay if num_frames > 0 else 0

    def frames_for_steps(self, num_steps: int) -> int:
        return max(0, num_steps - self.max_delay)

    def _frame_index(self, num_frames: int) -> torch.Tensor:
        S = self.num_steps(num_frames)
        t = torch.arange(S).view(1, S) - torch.tensor(self.delays).view(-1, 1)  # [K, S]
        return torch.where((t >= 0) & (t < num_frames), t, -1)


class ParallelPattern(DelayPattern):
    """All K codebooks of frame t at step t (no delay): ``S = T``."""

    name = "parallel"

    def __init__(self, n_q: int) -> None:
        super().__init__(n_q, delays=[0] * n_q)


class FlattenPattern(Pattern):
    """One codebook per step: step ``t * K + q`` holds codebook q of frame t (``S = K * T``).

    Fully autoregressive over codebooks (slowest, most exact); each step has one valid row.
    """

    name = "flatten"

    def num_steps(self, num_frames: int) -> int:
        return self.n_q * num_frames

    def frames_for_steps(self, num_steps: int) -> int:
        return max(0, num_steps) // self.n_q

    def _frame_index(self, num_frames: int) -> torch.Tensor:
        K, S = self.n_q, self.num_steps(num_frames)
        s = torch.arange(S).view(1, S)
        q = torch.arange(K).view(K, 1)
        return torch.where(s % K == q, s // K, -1)


class VallePattern(Pattern):
    """VALL-E style, as AudioCraft's ``VALLEPattern``: first codebook 0 of every frame, then the
    rest.

    Steps ``0 .. T-1`` hold codebook 0 of frame ``s`` (an autoregressive "coarse" pass over the
    whole clip); steps ``T .. 2T-1 (+ max delay)`` hold codebooks ``1 .. K-1`` of frame
    ``s - T - delays[q-1]`` in parallel (delays default to 0). ``S = 2T + max(delays)``.

    Not prefix-stable: where codebook 1 starts depends on T, so generation must fix T up front
    (``mask(T)`` says which rows to sample at each step) and :meth:`frames_for_steps` assumes
    a complete layout. With ``n_q == 1`` it is the plain one-codebook sequence (``S = T``).
    """

    name = "valle"
    prefix_stable = False

    def __init__(self, n_q: int, delays: list[int] | None = None) -> None:
        super().__init__(n_q)
        delays = [0] * (n_q - 1) if delays is None else [int(d) for d in delays]
        if len(delays) != n_q - 1 or (delays and min(delays) < 0):
            raise ConfigError(f"{self.name} pattern: need {n_q - 1} non-negative delays (codebooks 1..K-1), got {delays}")
        self.delays = delays
        self.max_delay = max(delays, default=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q}, delays={self.delays})"

    def num_steps(self, num_frames: int) -> int:
        if num_frames == 0:
            return 0
        return num_frames if self.n_q == 1 else 2 * num_frames + self.max_delay

    def frames_for_steps(self, num_steps: int) -> int:
        if self.n_q == 1:
            return max(0, num_steps)
        return max(0, (num_steps - self.max_delay) // 2)

    def _frame_index(self, num_frames: int) -> torch.Tensor:
        T, S = num_frames, self.num_steps(num_frames)
        s = torch.arange(S).view(1, S)
        first = torch.where(s < T, s, -1)  # [1, S]
        rest = s - T - torch.tensor(self.delays, dtype=torch.long).view(-1, 1)  # [K-1, S]
        rest = torch.where((rest >= 0) & (rest < T), rest, -1)
        return torch.cat([first, rest], dim=0)


PATTERNS: dict[str, type[Pattern]] = {
    "delay": DelayPattern, "parallel": ParallelPattern, "flatten": FlattenPattern, "valle": VallePattern,
}


def get_pattern(name: str, n_q: int, **kwargs) -> Pattern:
    """The pattern called ``name`` (delay / parallel / flatten / valle) for ``n_q`` codebooks.

    Extra keyword arguments go to the pattern (``delays=`` for delay and valle).
    """
    if name not in PATTERNS:
        raise ConfigError(f"unknown codebook pattern {name!r}; choose one of {sorted(PATTERNS)}")
    try:
        return PATTERNS[name](n_q, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{name} pattern: {exc}") from None
