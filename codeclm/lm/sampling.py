"""Choosing the next tokens from logits: greedy, temperature, top-k, top-p, classifier-free guidance.

Everything works on logits ``[..., V]`` (usually ``[B, K, V]``: batch, codebook, vocabulary)
and is vectorised over the leading dimensions. No function reads a value back to the host, so a
decoding step never waits on the device. Sampling uses the exponential-race trick
(``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``), which is deterministic under a
``torch.Generator`` and needs no ``multinomial`` reshape.
"""

from __future__ import annotations

import torch

from codeclm.errors import CodecLMError

__all__ = ["SamplingError", "apply_cfg", "check_sampling_params", "sample_next", "top_k_filter", "top_p_filter"]


class SamplingError(CodecLMError, ValueError):
    """Sampling parameters out of range (negative temperature, top_p outside [0, 1]...)."""


def check_sampling_params(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise SamplingError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise SamplingError(f"top_p must be in [0, 1] (0 disables it), got {top_p}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of the last dimension, set the rest to ``-inf``.

    Exactly ``k`` survive even on ties. ``k == 0`` or ``k >= V`` returns ``logits`` unchanged.
    """
    if k < 0:
        raise SamplingError(f"top_k must be >= 0 (0 disables it), got {k}")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    values, indices = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability mass
    reaches ``p``, set the rest to ``-inf``.

    A token is kept when the mass of the tokens ranked strictly above it is below ``p``, so the
    most likely token always survives. ``p == 0`` (disabled) or ``p >= 1`` returns ``logits``.
    """
    if not 0.0 <= p <= 1.0:
        raise SamplingError(f"top_p must be in [0, 1] (0 disables it), got {p}")
    if p == 0.0 or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.empty_like(logits).scatter(-1, order, sorted_logits)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                do_sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits [B, K, V]`` -> ``[B, K]`` (long).

    Greedy (argmax) when ``temperature == 0`` or ``do_sample`` is False. Otherwise the logits are
    divided by ``temperature``, filtered by top-k then top-p (0 disables either) and sampled;
    the same ``generator`` state gives the same tokens.
    """
    check_sampling_params(temperature, top_k, top_p)
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    logits = top_p_filter(top_k_filter(logits, top_k), top_p)
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs / race).argmax(dim=-1)


def apply_cfg(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``.

    ``scale == 1`` gives the conditional logits, ``0`` the unconditional ones, ``> 1`` pushes
    further towards the condition (MusicGen uses 3).
    """
    if scale < 0:
        raise SamplingError(f"cfg scale must be >= 0, got {scale}")
    if cond_logits.shape != uncond_logits.shape:
        raise SamplingError(f"cfg needs logits of one shape, got {tuple(cond_logits.shape)} and {tuple(uncond_logits.shape)}")
    return uncond_logits + scale * (cond_logits - uncond_logits)
