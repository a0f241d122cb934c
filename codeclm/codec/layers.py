"""Streaming building blocks of the SEANet encoder/decoder: conv, transposed conv, LSTM, ELU.

Every layer has two paths:

* **offline** (``forward`` outside a streaming block): the whole signal at once, with EnCodec's
  padding rules (left/causal or centred padding, extra right padding to complete the last
  frame). This is the training path and the one that matches ``transformers``' EnCodec.
* **streaming** (inside ``with model.streaming():``): the input is a whole number of codec frames
  and each layer keeps the state it needs (last input samples, overlap-add tail, LSTM state).

Bit-exact streaming. Floating-point kernels (oneDNN convolutions, MKL GEMMs, vectorised ``exp``)
round differently depending on how long the input is, so naive chunking changes the last bits.
The streaming path therefore computes every layer *frame-synchronously*: each code frame's
window (context + that frame's samples) is one item of a convolution batch, so the numbers a
frame gets depend only on that frame's window, never on how many frames came in the same call.
The codec's offline ``encode``/``decode`` of a streamable model run this same path over all
frames at once, so offline and any chunking give identical bits (tests check random chunkings).

Layout while streaming: activations travel *frames-as-batch*, ``[B*N, C, L]`` (item ``b*N + n``
holds frame ``n`` of batch item ``b``, ``L`` samples per frame at that depth), so consecutive
layers need no reshuffling; the codec converts at the encoder input and decoder output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.streaming import StreamingModule

# ---------------------------------------------------------------------------------------------
# Element-wise ELU whose result does not depend on where an element sits in the tensor.
# ---------------------------------------------------------------------------------------------
_VEC_BLOCK = 64  # a multiple of two SIMD vectors on every CPU torch supports (AVX-512: 32 floats)
_PIECE = 32768  # torch's element-wise grain size: pieces this big run on one thread


def elu_exact(x: torch.Tensor) -> torch.Tensor:
    """ELU computed so every element takes torch's vectorised code path.

    Torch evaluates the last ``n % 32`` elements of an element-wise op (and the edges of each
    thread's slice) with a scalar ``exp`` whose rounding differs from the vectorised one, so
    ``elu(x)[i]`` depends on the tensor's length. Feeding pieces that are whole multiples of the
    SIMD block, each on one thread, removes that dependence.
    """
    flat = x.contiguous().view(-1)
    n = flat.numel()
    out = torch.empty_like(flat)
    full = n - n % _VEC_BLOCK
    for start in range(0, full, _PIECE):
        end = min(start + _PIECE, full)
        out[start:end] = F.elu(flat[start:end])
    if full < n:
        tail = flat.new_zeros(_VEC_BLOCK)
        tail[: n - full] = flat[full:]
        out[full:] = F.elu(tail)[: n - full]
    return out.view_as(x)


class ELU(StreamingModule):
    """ELU; position-independent (exact) while streaming, plain ``F.elu`` offline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elu_exact(x) if self.is_streaming else F.elu(x)


# ---------------------------------------------------------------------------------------------
# Padding helpers (EnCodec's rules)
# ---------------------------------------------------------------------------------------------
def extra_padding(length: int, kernel: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last (partial) frame of a strided conv complete."""
    n_frames = (length - kernel + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel - padding_total)
    return ideal - length


def pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """``F.pad`` that also reflect-pads inputs shorter than the padding (zeros first, as EnCodec)."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode="constant" if mode == "constant" else mode)
    length = x.shape[-1]
    max_pad = max(left, right)
    extra = 0
    if length <= max_pad:
        extra = max_pad - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


def _batch_at_least_two(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """oneDNN picks a different kernel for batch 1; pad to 2 so every call rounds the same way."""
    n = x.shape[0]
    return (torch.cat([x, x], 0), n) if n == 1 else (x, n)


_THNN = getattr(torch._C._nn, "thnn_conv2d", None)


def batch_invariant_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                           stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Conv1d whose result for one batch item never depends on the batch size.

    ``F.conv1d`` switches between oneDNN and a native kernel by batch size and thread count
    (different rounding), and oneDNN treats a batch of one specially. So on CPU float32 the
    kernel is chosen by the layer's shape alone and a batch is never of size one: pointwise
    (1x1) convolutions use the native kernel (one single-threaded GEMM per item, no weight
    reordering: fast for the small batches of streaming), the others oneDNN.
    """
    x, n = _batch_at_least_two(x)
    if x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32:
        if weight.shape[-1] == 1 and stride == 1 and _THNN is not None:
            y = _THNN(x[:, :, None, :], weight[:, :, None, :], [1, 1], bias, [1, 1], [0, 0])[:, :, 0]
            return y[:n]
        if torch.backends.mkldnn.is_available():
            return torch.mkldnn_convolution(x.contiguous(), weight, bias, [0], [stride], [dilation], 1)[:n]
    return F.conv1d(x, weight, bias, stride=stride, dilation=dilation)[:n]


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for ``x`` ``[M, D]`` with rounding independent of ``M``.

    A 1x1 convolution with one batch item per row: oneDNN computes each item the same way
    whatever the batch size (unlike GEMM, whose blocking depends on ``M``).
    """
    return batch_invariant_conv1d(x[:, :, None], weight[:, :, None])[:, :, 0]


def to_frames(x: torch.Tensor, frame_length: int) -> torch.Tensor:
    """Continuous ``[B, C, N*L]`` -> frames-as-batch ``[B*N, C, L]``."""
    b, c, t = x.shape
    n = t // frame_length
    return x.view(b, c, n, frame_length).permute(0, 2, 1, 3).reshape(b * n, c, frame_length)


def from_frames(y: torch.Tensor, batch: int) -> torch.Tensor:
    """Frames-as-batch ``[B*N, C, L]`` -> continuous ``[B, C, N*L]``."""
    bn, c, length = y.shape
    n = bn // batch
    return y.view(batch, n, c, length).permute(0, 2, 1, 3).reshape(batch, c, n * length)


def with_context(x: torch.Tensor, previous: torch.Tensor, context: int, batch: int) -> torch.Tensor:
    """Prepend to each frame the ``context`` samples before it (from earlier frames or the state).

    ``x`` is ``[B*N, C, L]``, ``previous`` the last ``context`` samples of the stream so far
    ``[B, C, context]``; returns windows ``[B*N, C, context + L]``.
    """
    bn, c, length = x.shape
    n = bn // batch
    frames = x.view(batch, n, c, length)
    if context <= length:  # the context sits in the previous frame alone
        tails = torch.cat([previous[:, None], frames[:, :-1, :, length - context:]], dim=1)
        return torch.cat([tails, frames], dim=-1).view(bn, c, context + length)
    stream = torch.cat([previous, from_frames(x, batch)], dim=-1)  # [B, C, context + N*L]
    windows = stream.unfold(-1, context + length, length)  # [B, C, N, context + L]
    return windows.permute(0, 2, 1, 3).reshape(bn, c, context + length)


def last_samples(x: torch.Tensor, previous: torch.Tensor, count: int, batch: int) -> torch.Tensor:
    """The last ``count`` samples of the stream after frames ``x`` ``[B*N, C, L]``: ``[B, C, count]``."""
    bn, c, length = x.shape
    frames = x.view(batch, bn // batch, c, length)
    if count <= length:
        return frames[:, -1, :, length - count:].contiguous()
    stream = torch.cat([previous, from_frames(x, batch)], dim=-1)
    return stream[..., stream.shape[-1] - count:].contiguous()


# ---------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------
@dataclass
class _ConvState:
    previous: torch.Tensor | None = None  # last ``kernel - stride`` input samples


class StreamingConv1d(StreamingModule):
    """Conv1d with EnCodec padding (causal or centred), optional time group norm, streamable.

    ``frame_length`` (input samples per code frame) is set by the encoder/decoder builder;
    the streaming path needs it to cut the input into per-frame windows.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, *,
                 causal: bool = True, pad_mode: str = "constant", norm: str = "none", bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride, dilation=dilation, bias=bias)
        self.norm = nn.GroupNorm(1, out_ch) if norm == "time_group_norm" else nn.Identity()
        self.causal, self.pad_mode = causal, pad_mode
        self.frame_length: int | None = None

    @property
    def stride(self) -> int:
        return self.conv.stride[0]

    @property
    def effective_kernel(self) -> int:
        return (self.conv.kernel_size[0] - 1) * self.conv.dilation[0] + 1

    def _init_streaming_state(self, batch_size: int) -> _ConvState:
        return _ConvState()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_streaming(x) if self.is_streaming else self._forward_offline(x)

    def _forward_offline(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.effective_kernel, self.stride
        pad_total = k - s
        extra = extra_padding(x.shape[-1], k, s, pad_total)
        if self.causal:
            x = pad1d(x, pad_total, extra, self.pad_mode)
        else:
            right = pad_total // 2
            x = pad1d(x, pad_total - right, right + extra, self.pad_mode)
        return self.norm(self.conv(x))

    def _forward_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: frames-as-batch ``[B*N, C_in, L]`` -> ``[B*N, C_out, L / stride]``."""
        state: _ConvState = self._streaming_state
        batch = self._streaming_batch_size
        context = self.effective_kernel - self.stride
        if x.shape[0] == 0:
            return x.new_zeros(0, self.conv.out_channels, x.shape[-1] // self.stride)
        if context == 0:
            windows = x
        else:
            if state.previous is None:
                state.previous = x.new_zeros(batch, x.shape[1], context)
            windows = with_context(x, state.previous, context, batch)
            state.previous = last_samples(x, state.previous, context, batch)
        y = batch_invariant_conv1d(windows, self.conv.weight, self.conv.bias, self.stride, self.conv.dilation[0])
        return self.norm(y)


@dataclass
class _ConvTrState:
    tail: torch.Tensor | None = None  # overlap-add tail of the last frame, bias not yet added
    pointwise: torch.Tensor | None = None  # the kernel as a 1x1 conv, built once per stream


class StreamingConvTranspose1d(StreamingModule):
    """ConvTranspose1d with EnCodec's trimming (causal: trim right), streamable.

    Streaming computes each input frame's contribution with a pointwise convolution (one batch
    item per frame) and overlap-adds its tail into the next frame in a fixed order, so the
    result is the same whatever the chunking.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, causal: bool = True,
                 norm: str = "none", trim_right_ratio: float = 1.0):
        super().__init__()
        self.convtr = nn.ConvTranspose1d(in_ch, out_ch, kernel, stride)
        self.norm = nn.GroupNorm(1, out_ch) if norm == "time_group_norm" else nn.Identity()
        self.causal, self.trim_right_ratio = causal, trim_right_ratio
        self.frame_length: int | None = None

    @property
    def stride(self) -> int:
        return self.convtr.stride[0]

    def _init_streaming_state(self, batch_size: int) -> _ConvTrState:
        return _ConvTrState()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_streaming(x) if self.is_streaming else self._forward_offline(x)

    def _forward_offline(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.convtr.kernel_size[0], self.stride
        pad_total = k - s
        y = self.norm(self.convtr(x))
        right = math.ceil(pad_total * self.trim_right_ratio) if self.causal else pad_total // 2
        left = pad_total - right
        return y[..., left: y.shape[-1] - right]

    def _forward_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: frames-as-batch ``[B*N, C_in, L]`` -> ``[B*N, C_out, L * stride]``."""
        state: _ConvTrState = self._streaming_state
        batch = self._streaming_batch_size
        k, s = self.convtr.kernel_size[0], self.stride
        out_ch = self.convtr.out_channels
        bn, _, length = x.shape
        reach = -(-k // s)  # input steps one step's output spans
        if state.tail is None:
            state.tail = x.new_zeros(batch, out_ch, (reach - 1) * s)
        if bn == 0:
            return x.new_zeros(0, out_ch, length * s)
        # pointwise conv: every input step -> its k (padded to reach*s) output samples
        if state.pointwise is None:
            w = self.convtr.weight  # [in, out, k]
            state.pointwise = F.pad(w, (0, reach * s - k)).permute(1, 2, 0).reshape(out_ch * reach * s, -1, 1).contiguous()
        z = batch_invariant_conv1d(x, state.pointwise).view(bn, out_ch, reach, s, length)
        out = z.new_zeros(bn, out_ch, length + reach - 1, s)
        for r in range(reach):  # fixed order: identical rounding in every chunking
            out[:, :, r: r + length] += z[:, :, r].transpose(-1, -2)
        frames = bn // batch
        main = out[:, :, :length].reshape(batch, frames, out_ch, length * s)
        tails = out[:, :, length:].reshape(batch, frames, out_ch, (reach - 1) * s)
        prev = torch.cat([state.tail[:, None], tails[:, :-1]], dim=1)
        main[..., : prev.shape[-1]] += prev
        state.tail = tails[:, -1]
        if self.convtr.bias is not None:
            main = main + self.convtr.bias.view(1, 1, -1, 1)
        return main.view(bn, out_ch, length * s)


# ---------------------------------------------------------------------------------------------
# LSTM and residual block
# ---------------------------------------------------------------------------------------------
class StreamingLSTM(StreamingModule):
    """Multi-layer LSTM with a skip connection over ``[B, C, T]`` (EnCodec's ``SLSTM``).

    Streaming runs the recurrence step by step with the hidden state carried across chunks;
    the input projections of all steps are one batch-invariant pointwise product, so the
    numbers never depend on how many steps came together.
    """

    def __init__(self, dim: int, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {"hc": [None] * self.lstm.num_layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_streaming:
            seq = x.permute(2, 0, 1)  # [T, B, C]
            return (self.lstm(seq)[0] + seq).permute(1, 2, 0)
        # frames-as-batch [B*N, C, 1] at the frame rate: one step per frame
        batch = self._streaming_batch_size
        if x.shape[0] == 0:
            return x
        if x.shape[-1] != 1:
            raise ValueError("streaming LSTM expects one step per frame (place it at the frame rate)")
        seq = x.view(batch, -1, x.shape[1]).transpose(0, 1)  # [N, B, C]
        steps, _, dim = seq.shape
        state = self._streaming_state["hc"]
        layer_in = seq
        for layer in range(self.lstm.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(self.lstm, f"{name}_l{layer}")
                                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            proj = (rowwise_linear(layer_in.reshape(steps * batch, -1), w_ih) + (b_ih + b_hh)).view(steps, batch, -1)
            h, c = state[layer] if state[layer] is not None else (seq.new_zeros(batch, dim), seq.new_zeros(batch, dim))
            w_hh_t = w_hh.t()
            outs = []
            for t in range(steps):
                i, f, g, o = torch.addmm(proj[t], h, w_hh_t).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            state[layer] = (h, c)
            layer_in = torch.stack(outs)
        return (layer_in + seq).transpose(0, 1).reshape(batch * steps, dim, 1)


class ResidualUnit(nn.Module):
    """SEANet residual unit: ELU, conv(k, dilation), ELU, conv(1), plus a (1x1 conv) shortcut."""

    def __init__(self, dim: int, kernel: int, dilations: tuple[int, int], compress: int, conv_shortcut: bool,
                 **conv_kw):
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([
            ELU(), StreamingConv1d(dim, hidden, kernel, dilation=dilations[0], **conv_kw),
            ELU(), StreamingConv1d(hidden, dim, 1, dilation=dilations[1], **conv_kw),
        ])
        self.shortcut = StreamingConv1d(dim, dim, 1, **conv_kw) if conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return self.shortcut(x) + y
