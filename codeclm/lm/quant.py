"""Int8 weight-only decoding: fewer bytes per step for the memory-bound LM step loop.

At batch 1-2 a decoding step reads every weight once, so fp32 decoding is capped by memory
bandwidth (``benchmarks/lm_speed.py``'s ``matmul_floor``). :func:`quantize_int8` returns a copy
of a :class:`~codeclm.lm.transformer.TokenLM` whose transformer linear layers hold int8 weights
with one fp32 scale per output channel (symmetric, round to nearest) and multiply with
``torch._weight_int8pack_mm`` (activations in bfloat16, accumulation in fp32): a quarter of the
bytes. The embeddings, the K heads and the conditioning projection stay fp32.

This is an *option*: tokens are not those of fp32 decoding (greedy decoding agrees on most
steps; ``benchmarks/lm_speed.py --int8`` measures the agreement and the logit error). The
fp32 path stays the default and stays exact.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Int8Linear", "int8_available", "quantize_int8"]


def int8_available() -> bool:
    """True when this torch has the CPU int8 weight-only matmul."""
    return hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with ``q`` int8 ``[out, in]``, ``scale`` per output channel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (fp32; for shape / dtype / device queries)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.device.type == "cpu" and flat.shape[0] > 0:
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.qweight, self.scale).to(x.dtype)
        else:  # other devices: dequantise (correct, not faster)
            y = F.linear(flat, self.qweight.to(x.dtype) * self.scale.to(x.dtype)[:, None])
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def quantize_int8(lm: nn.Module, *, skip: tuple[str, ...] = ("heads", "emb", "cond_proj")) -> nn.Module:
    """A copy of ``lm`` with its linear layers (except those under ``skip``) in int8 (inference only)."""
    if not int8_available():
        raise RuntimeError("this torch has no torch._weight_int8pack_mm (int8 weight-only matmul)")
    out = copy.deepcopy(lm).eval()
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(full == s or full.startswith(s + ".") for s in skip):
                setattr(module, child_name, Int8Linear(child))
    return out
