"""Logits processors and stopping criteria for :func:`codeclm.lm.generate.iter_codes`.

Small callables in the style of transformers' ``LogitsProcessorList`` / ``StoppingCriteriaList``:

* a **logits processor** ``proc(input_ids, scores) -> scores`` sees the steps fed so far
  (``input_ids [B, K, s]``, prompt included) and the scores of the next step (``[B, K, V]``,
  after classifier-free guidance, before temperature / top-k / top-p) and returns new scores;
* a **stopping criterion** ``crit(input_ids, scores) -> done [B]`` (bool) sees the steps
  including the one just sampled; a row that is done stays done, its later tokens are the loop's
  ``pad_token_id``, and generation ends when every row is done.

Both work on tensors only (no value read back to the host), so a processor never adds a sync;
only the "every row done?" test of the loop does, and only when criteria are given.

VALL-E's AR uses :class:`MinNewTokensLogitsProcessor` (no EOS before ``min_frames_per_phoneme *
phonemes`` frames) and :class:`EosStoppingCriteria` + :class:`MaxNewTokensCriteria` (EOS, or
``max_frames_per_phoneme * phonemes`` frames), one limit per row.
"""

from __future__ import annotations

import torch

__all__ = ["CodebookTemperatureLogitsWarper", "EosStoppingCriteria", "LogitsProcessorList", "MaxNewTokensCriteria",
           "MinNewTokensLogitsProcessor", "StoppingCriteriaList", "check_codebook_temperatures"]


def _per_row(value, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.long, device=device)
    return t.expand(batch) if t.dim() == 0 else t


class LogitsProcessorList(list):
    """Processors applied in order."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for proc in self:
            scores = proc(input_ids, scores)
        return scores


class StoppingCriteriaList(list):
    """A row is done when any criterion says so."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for crit in self:
            done = done | crit(input_ids, scores)
        return done


class MinNewTokensLogitsProcessor:
    """``eos`` is not a candidate while a row has fewer than ``min_new[b]`` new steps (after the
    ``prompt_steps`` steps of the prompt)."""

    def __init__(self, prompt_steps: int, min_new, eos: int) -> None:
        self.prompt_steps, self.min_new, self.eos = int(prompt_steps), min_new, int(eos)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids.shape[-1] - self.prompt_steps  # steps generated so far (a host int)
        min_new = _per_row(self.min_new, scores.shape[0], scores.device)
        block = (min_new > new)[:, None, None] & (torch.arange(scores.shape[-1], device=scores.device) == self.eos)
        return scores.masked_fill(block, float("-inf"))


def check_codebook_temperatures(values, n_q: int, where: str, error: type[Exception] | None = None) -> list[float]:
    """``values`` as one finite temperature >= 0 per codebook; otherwise a one-line ``error``
    (default SamplingError; a folder's or a recipe's reader passes ConfigError)."""
    import math

    from codeclm.lm.sampling import SamplingError

    if not isinstance(values, (list, tuple)) or len(values) != n_q or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        raise (error or SamplingError)(f"{where}: codebook temperatures must be {n_q} numbers >= 0 (one per codebook), "
                                       f"got {values!r}")
    return [float(v) for v in values]


class CodebookTemperatureLogitsWarper:
    """Scales each codebook's scores by its own temperature (``scores[:, k] / temperatures[k]``,
    before the sampler's global temperature and top-k / top-p): a fine-grained row (a pitch
    codebook) can be sampled more conservatively than the others. 0 makes that row greedy (only
    its best token stays a candidate); 1 leaves a row as it is."""

    def __init__(self, temperatures) -> None:
        self.temperatures = [float(t) for t in temperatures]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[1] != len(self.temperatures):
            raise ValueError(f"{len(self.temperatures)} codebook temperatures for {scores.shape[1]} codebooks")
        t = torch.tensor(self.temperatures, dtype=scores.dtype, device=scores.device)
        greedy = (t == 0)[None, :, None]
        out = scores / torch.where(t > 0, t, 1.0)[None, :, None]
        best = scores == scores.amax(-1, keepdim=True)
        return torch.where(greedy & ~best, torch.full_like(out, float("-inf")), out)


class EosStoppingCriteria:
    """Done when the step just sampled holds ``eos`` (in any codebook)."""

    def __init__(self, eos: int) -> None:
        self.eos = int(eos)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return (input_ids[:, :, -1] == self.eos).any(-1)


class MaxNewTokensCriteria:
    """Done after ``max_new[b]`` new steps (after the ``prompt_steps`` of the prompt)."""

    def __init__(self, prompt_steps: int, max_new) -> None:
        self.prompt_steps, self.max_new = int(prompt_steps), max_new

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids.shape[-1] - self.prompt_steps
        return _per_row(self.max_new, input_ids.shape[0], input_ids.device) <= new
