"""EnCodec's loss balancer: weights set each loss's share of the gradient, not its raw scale.

For every loss ``l_i`` the balancer takes the gradient ``g_i = d l_i / d y`` with respect to the
model output ``y`` (the decoded waveform), tracks an exponential moving average of its norm
``<||g_i||>`` and sends

    g = sum_i  total_norm * (w_i / sum_j w_j) * g_i / (epsilon + <||g_i||>)

back through the model with a single ``y.backward(g)``. A loss's weight is therefore the fraction
of the gradient it contributes whatever its numeric range (mel distance vs feature matching).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist

__all__ = ["Balancer"]


class Balancer:
    """Gradient balancer of Défossez et al. (2022), as in audiocraft.

    Args:
        weights: loss name -> weight; :meth:`backward` needs a weight for every loss it gets.
        total_norm: norm of the summed gradient when the gradients are equal to their average norm.
        ema_decay: decay of the (bias-corrected) moving average of each gradient norm; 0 uses the
            current norm only.
        per_batch_item: measure norms per batch item and average them over the batch (so the batch
            size does not change the scale) instead of over the whole tensor.
        epsilon: added to the norm before dividing.

    Under ``torch.distributed`` (and so Accelerate) the norms are averaged across processes before
    the moving average, so all ranks apply the same scales.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        total_norm: float = 1.0,
        ema_decay: float = 0.999,
        per_batch_item: bool = True,
        epsilon: float = 1e-12,
    ):
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {dict(weights)}")
        self.weights = dict(weights)
        self.total_norm = total_norm
        self.ema_decay = ema_decay
        self.per_batch_item = per_batch_item
        self.epsilon = epsilon
        self._ema_sum: dict[str, float] = {}
        self._ema_count: dict[str, float] = {}

    def _norm(self, grad: torch.Tensor) -> torch.Tensor:
        if self.per_batch_item and grad.dim() > 1:
            return torch.linalg.vector_norm(grad.flatten(1), dim=1).mean()
        return torch.linalg.vector_norm(grad)

    def _average_across_processes(self, norms: torch.Tensor) -> torch.Tensor:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            norms = norms.clone()
            dist.all_reduce(norms, op=dist.ReduceOp.SUM)
            norms /= dist.get_world_size()
        return norms

    def _update_ema(self, norms: dict[str, float]) -> dict[str, float]:
        for name, value in norms.items():
            self._ema_sum[name] = self._ema_sum.get(name, 0.0) * self.ema_decay + value
            self._ema_count[name] = self._ema_count.get(name, 0.0) * self.ema_decay + 1.0
        return {name: self._ema_sum[name] / self._ema_count[name] for name in norms}

    def backward(self, losses: Mapping[str, torch.Tensor], model_output: torch.Tensor) -> dict[str, float]:
        """Backpropagate the balanced sum of ``losses`` through ``model_output``.

        Every loss must be a scalar computed from ``model_output``. Gradients accumulate into the
        parameters upstream of ``model_output`` as with ``loss.backward()``; parameters that the
        losses reach without passing through ``model_output`` (a discriminator, say) get none.
        Returns each loss's raw gradient norm (before balancing) for logging.
        """
        missing = sorted(set(losses) - set(self.weights))
        if missing:
            raise KeyError(f"no balancer weight for loss(es) {missing}; weights are {sorted(self.weights)}")
        if not losses:
            raise ValueError("no losses to balance")
        grads = {}
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, [model_output], retain_graph=True, allow_unused=True)
            if grad is None:
                raise ValueError(f"loss {name!r} does not depend on the model output")
            grads[name] = grad

        names = list(grads)
        norms = torch.stack([self._norm(grads[n]).detach().float() for n in names])
        norms = self._average_across_processes(norms).tolist()
        raw = dict(zip(names, norms))
        averaged = self._update_ema(raw)

        total_weight = sum(self.weights[n] for n in names)
        if total_weight <= 0:
            raise ValueError(f"the weights of losses {names} sum to zero")
        total_grad = torch.zeros_like(model_output)
        for name in names:
            scale = self.total_norm * self.weights[name] / total_weight / (self.epsilon + averaged[name])
            total_grad.add_(grads[name], alpha=scale)
        model_output.backward(total_grad)
        return raw

    def state_dict(self) -> dict:
        """The moving averages, to save with a checkpoint."""
        return {"ema_sum": dict(self._ema_sum), "ema_count": dict(self._ema_count)}

    def load_state_dict(self, state: Mapping) -> None:
        self._ema_sum = dict(state["ema_sum"])
        self._ema_count = dict(state["ema_count"])
