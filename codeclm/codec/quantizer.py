"""Residual vector quantization (SoundStream/EnCodec) with EMA codebooks.

Training features: k-means initialisation on the first batch, exponential-moving-average codebook
updates, replacement of dead codes by random batch vectors, straight-through gradients, a
commitment loss, and quantizer dropout (a random number of codebooks per batch) so one model
serves several bandwidths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from codeclm.codec.layers import rowwise_linear


def nearest_code(x: torch.Tensor, embed: torch.Tensor, embed_sqnorm: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the closest codebook vector for each row of ``x`` ``[M, D]``.

    The dot products use :func:`rowwise_linear`, whose rounding does not depend on how many rows
    come together, so streaming and offline encoding pick the same codes. ``embed_sqnorm`` is
    ``|embed|^2`` per row when the caller keeps it (it is the same tensor either way).
    """
    if embed_sqnorm is None:
        embed_sqnorm = embed.pow(2).sum(-1)
    dist_ = embed_sqnorm[None] - 2 * rowwise_linear(x, embed)  # |x|^2 does not change the argmin
    return dist_.argmin(dim=-1)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, 0)
    return t


def kmeans(samples: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means on ``[N, D]`` with k-means++ seeding, then Lloyd iterations; returns ``[k, D]``."""
    n = samples.shape[0]
    pick = lambda weights: int(torch.multinomial(weights, 1, generator=generator))  # noqa: E731
    means = samples.new_empty(k, samples.shape[1])
    means[0] = samples[pick(torch.ones(n))]
    closest = (samples - means[0]).pow(2).sum(-1)
    for i in range(1, k):  # each new centre far (in probability) from the ones chosen
        means[i] = samples[pick(closest + 1e-12 if closest.sum() > 0 else torch.ones(n))]
        closest = torch.minimum(closest, (samples - means[i]).pow(2).sum(-1))
    for _ in range(iters):
        assign = nearest_code(samples, means)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        filled = counts > 0
        means[filled] = sums[filled] / counts[filled, None]
    return means


class EMACodebook(nn.Module):
    """One codebook of ``bins`` vectors of size ``dim``, learnt by EMA (not by gradient)."""

    def __init__(self, dim: int, bins: int, decay: float = 0.99, kmeans_init: bool = True, kmeans_iters: int = 50,
                 dead_code_threshold: float = 2.0, eps: float = 1e-5):
        super().__init__()
        self.decay, self.kmeans_iters, self.dead_code_threshold, self.eps = decay, kmeans_iters, dead_code_threshold, eps
        embed = torch.zeros(bins, dim) if kmeans_init else torch.randn(bins, dim)
        self.register_buffer("inited", torch.tensor([float(not kmeans_init)]))
        self.register_buffer("cluster_size", torch.zeros(bins))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    @property
    def bins(self) -> int:
        return self.embed.shape[0]

    def _sqnorm(self) -> torch.Tensor:
        """``|embed|^2`` per code, recomputed only when the codebook changed (EMA update, loading,
        ``to()``): a stream of 20 ms chunks would otherwise recompute it for every frame."""
        try:
            key = (self.embed.data_ptr(), self.embed._version, self.embed.dtype, self.embed.device)
        except RuntimeError:  # an inference-mode tensor has no version counter: do not cache
            return self.embed.pow(2).sum(-1)
        cached = getattr(self, "_sqnorm_cache", None)
        if cached is None or cached[0] != key or torch.is_grad_enabled() and self.embed.requires_grad:
            cached = (key, self.embed.pow(2).sum(-1))
            self._sqnorm_cache = cached
        return cached[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, D]`` -> codes ``[M]``."""
        return nearest_code(x, self.embed, self._sqnorm())

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """k-means initialisation on the first training batch (no-op once initialised)."""
        if bool(self.inited.item()):
            return
        means = _broadcast(kmeans(x, self.bins, self.kmeans_iters))
        self.embed.copy_(means)
        self.embed_avg.copy_(means)
        self.cluster_size.fill_(1.0)
        self.inited.fill_(1.0)

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA update from a training batch ``x`` ``[M, D]`` and its codes; revive dead codes."""
        onehot_sum = _all_reduce(torch.bincount(codes, minlength=self.bins).to(x.dtype))
        embed_sum = _all_reduce(torch.zeros_like(self.embed).index_add_(0, codes, x))
        self.cluster_size.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.bins * self.eps) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        dead = self.cluster_size < self.dead_code_threshold
        if dead.any():
            pick = torch.randint(0, x.shape[0], (self.bins,), device=x.device)
            fresh = _broadcast(x[pick].clone())
            self.embed[dead] = fresh[dead]
            self.embed_avg[dead] = fresh[dead]
            self.cluster_size[dead] = self.dead_code_threshold


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, D, T], straight-through in training
    codes: torch.Tensor  # [B, n_q, T]
    commitment_loss: torch.Tensor  # scalar
    n_q: int


class ResidualVectorQuantizer(nn.Module):
    """``n_q`` EMA codebooks, each quantizing what the previous ones left."""

    def __init__(self, dim: int, n_q: int, bins: int, **codebook_kw):
        super().__init__()
        self.layers = nn.ModuleList([EMACodebook(dim, bins, **codebook_kw) for _ in range(n_q)])

    @property
    def n_q(self) -> int:
        return len(self.layers)

    @property
    def bins(self) -> int:
        return self.layers[0].bins

    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Latent ``[B, D, T]`` -> codes ``[B, n_q, T]`` (int64)."""
        x = x.to(self.layers[0].embed.dtype)
        b, d, t = x.shape
        residual = x.transpose(1, 2).reshape(b * t, d)
        codes = []
        for layer in self.layers[: n_q or self.n_q]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c.view(b, t))
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (K <= n_q) -> latent ``[B, D, T]``."""
        out = None
        for k in range(codes.shape[1]):
            q = self.layers[k].decode(codes[:, k])
            out = q if out is None else out + q
        return out.transpose(1, 2)

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        """Training/analysis pass: quantize with ``n_q`` codebooks, update EMA when training.

        Runs in float32 even under autocast (mixed-precision training): distances and EMA
        statistics need the precision, and the codebooks are float32 buffers.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self._forward(x.float(), n_q)
        out.quantized = out.quantized.to(x.dtype)
        return out

    def _forward(self, x: torch.Tensor, n_q: int | None) -> QuantizerOutput:
        n_q = n_q or self.n_q
        b, d, t = x.shape
        flat = x.transpose(1, 2).reshape(b * t, d)
        residual = flat.detach()
        quantized = torch.zeros_like(residual)
        codes = []
        for layer in self.layers[:n_q]:
            if self.training:
                layer.init_from(residual)
            c = layer.encode(residual)
            if self.training:
                layer.update(residual, c)
            q = layer.decode(c)
            residual = residual - q
            quantized = quantized + q
            codes.append(c.view(b, t))
        # commitment: pull the encoder output towards what the n_q codebooks can express
        commit = F.mse_loss(flat, quantized.detach())
        quantized = flat + (quantized - flat).detach()  # straight-through estimator
        return QuantizerOutput(quantized.view(b, t, d).transpose(1, 2), torch.stack(codes, 1), commit, n_q)
