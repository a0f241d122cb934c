"""The token language model over codec codes: patterns, transformer with KV cache, sampling.

    codes [B, K, T] ─pattern.build─▶ seq [B, K, S] ─TokenLM─▶ logits [B, K, S, card] ─sample_next─▶ tokens
"""

from codeclm.lm.config import LMConfig
from codeclm.lm.patterns import (
    PATTERNS,
    DelayPattern,
    FlattenPattern,
    ParallelPattern,
    Pattern,
    VallePattern,
    get_pattern,
)
from codeclm.lm.sampling import (
    SamplingError,
    apply_cfg,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from codeclm.lm.transformer import TokenLM

__all__ = [
    "PATTERNS",
    "DelayPattern",
    "FlattenPattern",
    "LMConfig",
    "ParallelPattern",
    "Pattern",
    "SamplingError",
    "TokenLM",
    "VallePattern",
    "apply_cfg",
    "get_pattern",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
