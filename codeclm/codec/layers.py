"""Streaming building blocks of the SEANet encoder/decoder: conv, transposed conv, LSTM, ELU.

Every layer has two paths:

* **offline** (``forward`` outside a streaming block): the whole signal at once, with EnCodec's
  padding rules (left/causal or centred padding, extra right padding to complete the last
  frame). This is the training path and the one that matches ``transformers``' EnCodec.
* **streaming** (inside ``with model.streaming():``): the input is a whole number of codec frames
  and each layer keeps the state it needs (last input samples, overlap-add tail, LSTM state).

Bit-exact streaming. Floating-point kernels (MKL GEMMs, oneDNN convolutions, vectorised ``exp``)
round differently depending on how long the input is, so naive chunking changes the last bits.
The streaming path therefore computes every layer with kernels whose result for one time step
does not depend on how many steps came in the same call:

* every convolution (kernel k, stride s, dilation d) is one GEMM ``patches @ W`` over the rows
  of a time-major signal (:func:`rows_matmul`); MKL's sgemm computes each output row with the
  same reduction order whatever the number of rows, once that number is a multiple of a small
  block (a kernel for 1-3 rows, and thread splits of a few rows, round differently), so rows are
  padded to :func:`row_block` with zeros. The transposed convolution is a GEMM to every step's
  ``k`` output samples followed by an overlap-add in a fixed order.
* element-wise ops go through :func:`elu_exact` (torch's scalar tail of a vectorised loop
  rounds differently) or are exact by nature (add).
* the LSTM's input projections are one row-invariant GEMM, the recurrence a fixed-shape step.

The codec's offline ``encode``/``decode`` of a streamable model run this same path over the whole
signal, so offline and any chunking give identical bits (tests check random and prime chunkings).

Layout while streaming: activations are time-major ``[B, T, C]`` (rows = time steps), so a conv's
patches are a strided view of its input and a pointwise conv is a plain GEMM; the codec
transposes at the encoder input and the decoder output.

Reflect padding (EnCodec's own weights) streams too: a causal layer's left reflect pad needs the
first ``k - s + 1`` samples of its input, so the layer holds its first samples back until they
have arrived (a one-time start-up delay, a few frames), and the right pad that completes the
last partial frame is applied at the end of the stream (``final`` state, set by ``flush()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.weak
from torch import nn

from codeclm.streaming import StreamingModule

# ---------------------------------------------------------------------------------------------
# Element-wise ELU whose result does not depend on where an element sits in the tensor.
# ---------------------------------------------------------------------------------------------
_VEC_BLOCK = 64  # a multiple of two SIMD vectors on every CPU torch supports (AVX-512: 32 floats)
_PIECE = 32768  # torch's element-wise grain size: pieces this big run on one thread


def pointwise_exact(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an element-wise ``fn`` (ELU, GELU, exp, log, sin...) computed so every element
    takes torch's vectorised code path.

    Torch evaluates the last ``n % 32`` elements of an element-wise op (and the edges of each
    thread's slice) with scalar code whose rounding differs from the vectorised one, so
    ``fn(x)[i]`` depends on the tensor's length. Feeding pieces that are whole multiples of the
    SIMD block, each on one thread, removes that dependence.
    """
    flat = x.contiguous().view(-1)
    n = flat.numel()
    if n <= _PIECE - _VEC_BLOCK:  # one piece (one thread): a single call, the tail padded into it
        extra = (-n) % _VEC_BLOCK
        return (fn(flat) if not extra else fn(F.pad(flat, (0, extra)))[:n]).view_as(x)
    out = torch.empty_like(flat)
    full = n - n % _VEC_BLOCK
    for start in range(0, full, _PIECE):
        end = min(start + _PIECE, full)
        out[start:end] = fn(flat[start:end])
    if full < n:
        tail = flat.new_zeros(_VEC_BLOCK)
        tail[: n - full] = flat[full:]
        out[full:] = fn(tail)[: n - full]
    return out.view_as(x)


def fft_rows(fn, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """``fn(x, **kwargs)`` for a 1-D FFT over the last dim (``torch.fft.rfft``/``irfft``) with every
    row's bits independent of how many rows come together: MKL's multi-threaded plan for a single
    short row (a few dozen points) rounds differently, so a lone row is padded to two."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    m = flat.shape[0]
    if m == 1:
        flat = torch.cat([flat, torch.zeros_like(flat)])
    y = fn(flat, **kwargs)
    return y[:m].reshape(*lead, y.shape[-1])


def elu_exact(x: torch.Tensor) -> torch.Tensor:
    """ELU whose result for an element does not depend on the tensor's length (:func:`pointwise_exact`)."""
    return pointwise_exact(F.elu, x)


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


_ROW_MULTIPLE = 8  # rows per thread: MKL's small-M kernels (1-3 rows) and few-row thread splits round differently


def row_block() -> int:
    """Row count multiple that makes :func:`rows_matmul` row-invariant with the current threads."""
    return _ROW_MULTIPLE * max(1, torch.get_num_threads())


def rows_matmul(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ w_t [K, N] (+ bias)`` with every row's rounding independent of ``M``.

    The rows are padded with zeros to a multiple of :func:`row_block` (so MKL never takes its
    small-M kernel or splits a few rows over threads); ``N`` must be >= 4 (gemv otherwise:
    :func:`pack_columns` pads a weight). Non-float32 or non-CPU tensors use a plain matmul.
    """
    m = x.shape[0]
    if m == 0:
        return x.new_zeros(0, w_t.shape[1])
    if x.device.type == "cpu" and x.dtype == torch.float32:
        g = row_block()
        extra = (-m) % g
        if extra:
            x = torch.cat([x, x.new_zeros(extra, x.shape[1])])
    y = torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)
    return y[:m] if y.shape[0] != m else y


# ---------------------------------------------------------------------------------------------
# Linear layers on pre-packed weights (the frame codec's per-frame GEMMs).
# ---------------------------------------------------------------------------------------------
_MIN_ONEDNN_ROWS = 2  # oneDNN computes a single row of K > 1024 with another kernel (other rounding)
_LINEAR_PACKS = torch.utils.weak.WeakIdKeyDictionary()  # weight -> {variant: (versions, PackedLinear)}


def _versions(*tensors: torch.Tensor | None) -> tuple | None:
    """What identifies the values of ``tensors`` (storage and version counter); None for an
    inference-mode tensor (no version counter)."""
    try:
        return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors if t is not None)
    except RuntimeError:
        return None


def _fp16_exact(w: torch.Tensor) -> bool:
    """Every value of ``w`` is a float16 number (a folder saved in float16, loaded as float32)."""
    return bool(torch.equal(w.half().float(), w))


class PackedLinear:
    """``x [M, K] -> x @ W.T + b``, then GELU, or ``add + s * (x @ W.T + b)`` with a layer scale
    ``s`` (``row_scale``), with every row's bits independent of ``M``, on a weight packed once
    (:func:`pack_linear`).

    Kernels, chosen by the weight alone (so a stream and the offline pass of the same model use
    the same one), each checked row-invariant by the tests (``M`` in 1..64 and offline sizes, 1
    and 2 threads; they reduce every output row over ``K`` in one order whatever the number of
    rows, where they sit in memory and the thread count):

    * ``"fp16"``: FBGEMM's float16-weight GEMM (``quantized.linear_dynamic_fp16``) where every
      weight is a float16 number (a float16 folder): the activations stay float32 and the
      products are float32 products of the very same weights, but the weight streams from
      memory at half the bytes: a streamed frame's GEMMs are memory-bound, about 3x faster.
    * ``"onednn"``: oneDNN's linear on its blocked float32 weight (the layer scale folded in:
      ``(s W) x + s b``), GELU or the addition fused as a post-op (the same bits as ``F.gelu`` /
      ``+`` after it); a lone row is computed twice (a single row of a long ``K`` takes another
      kernel).
    * ``"rows"``: :func:`rows_matmul` (not CPU float32, no oneDNN, or gradients needed).

    Outside ``"onednn"``, GELU is :func:`pointwise_exact`'s and the scale and addition are
    element-wise ops after the GEMM.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, row_scale: torch.Tensor | None = None):
        w = weight.detach()
        b = None if bias is None else bias.detach()
        self.out_features = w.shape[0]
        self.weight_t, self.bias, self.kind, self.op = w.t(), b, "rows", None
        self.scale = None if row_scale is None else row_scale.detach()
        tensors = [t for t in (weight, bias, row_scale) if t is not None]
        if (any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or w.dim() != 2
                or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):
            return
        if _fp16_exact(w):
            try:
                self.op, self.kind = torch.ops.quantized.linear_prepack_fp16(w.contiguous(), b), "fp16"
                return
            except (RuntimeError, AttributeError, NotImplementedError):  # no FBGEMM (not x86)
                pass
        if torch.backends.mkldnn.is_available():
            if self.scale is not None:
                w, self.bias = w * self.scale[:, None], None if b is None else b * self.scale
            try:
                self.op, self.kind = torch.ops.mkldnn._reorder_linear_weight(w.contiguous()), "onednn"
                self.scale = None  # folded in
            except (RuntimeError, AttributeError, NotImplementedError):  # a torch without the op
                self.bias = b

    def __call__(self, x: torch.Tensor, gelu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """``[M, K]`` -> ``[M, N]``; ``add`` (``[M, N]``) is added after the scale."""
        m = x.shape[0]
        if m == 0:
            return x.new_zeros(0, self.out_features)
        if self.kind == "onednn":
            return onednn_linear(x, self.op, self.bias, add, gelu)
        if self.kind == "fp16":
            y = torch.ops.quantized.linear_dynamic_fp16(x.contiguous(), self.op)
        else:
            y = rows_matmul(x, self.weight_t, self.bias)
        if gelu:
            y = pointwise_exact(F.gelu, y)
        if self.scale is not None:
            y = self.scale * y
        return y if add is None else add + y


def onednn_linear(x: torch.Tensor, op, bias: torch.Tensor | None, add: torch.Tensor | None = None,
                  gelu: bool = False, duplicate: bool = True) -> torch.Tensor:
    """oneDNN's linear on a packed weight ``op``: ``x [M, K] -> [M, N]`` (+ ``add`` as a fused binary
    post-op, or GELU). ``duplicate``: a call with fewer than ``_MIN_ONEDNN_ROWS`` rows computes a
    second copy of them (oneDNN picks another kernel for a lone row; one op, any row would do);
    a caller that always passes the same row count (a recurrence step) may skip it."""
    m = x.shape[0]
    twice = duplicate and m < _MIN_ONEDNN_ROWS
    if twice:
        x = torch.cat([x, x])
        add = None if add is None else torch.cat([add, add])
    if add is not None:
        y = torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), add.contiguous(), op, bias, "add")
    else:
        y = torch.ops.mkldnn._linear_pointwise(x.contiguous(), op, bias, "gelu" if gelu else "none", [],
                                               "none" if gelu else "")
    return y[:m] if twice else y


def stream_plan(module: nn.Module, build):
    """A streaming module's per-stream constants (weights read once, packed linears), built by
    ``build()`` at the stream's first call and kept in its state's ``"plan"``; outside a stream,
    built for this call only."""
    state = module._streaming_state
    if state is None:
        return build()
    if state.get("plan") is None:
        state["plan"] = build()
    return state["plan"]


def pack_linear(weight: torch.Tensor, bias: torch.Tensor | None = None,
                row_scale: torch.Tensor | None = None) -> PackedLinear:
    """:class:`PackedLinear` of ``weight`` ``[N, K]`` (times ``row_scale[:, None]`` when given),
    ``bias``: cached per weight tensor and made again when a tensor changes (``data_ptr`` or
    version counter: optimizer steps, ``load_state_dict``, ``to()``); packing costs about as much
    as a few hundred rows of GEMM. Inference-mode tensors (no version counter) are packed on every
    call: callers keep the result for a stream."""
    versions = _versions(weight, bias, row_scale)
    variant = (bias is not None, row_scale is not None, torch.is_grad_enabled())
    cached = _LINEAR_PACKS.get(weight) if versions is not None else None
    hit = cached.get(variant) if cached is not None else None
    if hit is not None and hit[0] == versions:
        return hit[1]
    packed = PackedLinear(weight, bias, row_scale)
    if versions is not None:
        if cached is None:
            cached = _LINEAR_PACKS[weight] = {}
        cached[variant] = (versions, packed)
    return packed


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for ``x`` ``[M, D]`` with rounding independent of ``M`` (see :func:`rows_matmul`)."""
    w_t = weight.t()
    if w_t.shape[1] < 4:
        return rows_matmul(x, F.pad(w_t, (0, 4 - w_t.shape[1])))[:, : w_t.shape[1]]
    return rows_matmul(x.contiguous(), w_t)


_PREPACK = False  # oneDNN-blocked weights, one copy per input length: streaming 20 ms chunks 1.25x less CPU,
# offline 1.5x more (the 2-D blocked kernels are slower on long inputs; a copy made for another
# length is 10x slower), and blocked and plain weights round differently, so one stream must use
# one or the other: off by default
_PACKS_PER_LAYER = 16  # input lengths remembered per layer (a stream sees a few; offline one per block size)


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


def pack_conv_weight(weight: torch.Tensor, stride: int, dilation: int, x: torch.Tensor):
    """oneDNN's blocked copy of a conv1d weight (as a 1 x k conv2d), made once per stream so the
    per-call weight reorder disappears (3x on streaming-sized inputs); None where not applicable
    (not CPU float32, or gradients needed)."""
    if not _onednn_ok(x, weight) or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
        return None
    try:
        w4 = weight.detach()[:, :, None, :].contiguous().to_mkldnn()
        size = [x.shape[0], x.shape[1], 1, max(x.shape[-1], (weight.shape[-1] - 1) * dilation + 1)]
        return torch._C._nn.mkldnn_reorder_conv2d_weight(w4, [0, 0], [1, stride], [1, dilation], 1, size)
    except (RuntimeError, AttributeError, NotImplementedError):  # a torch without these ops
        return None


def cached_pack(packs: dict | None, weight: torch.Tensor, stride: int, dilation: int, x: torch.Tensor):
    """``(packs, packed)``: the blocked weight for ``x``'s shape from a per-layer cache (None: pack
    nothing). The blocked layout never changes a result (tests), only the speed; a stream packs
    either always or never (grad mode and dtype are fixed for a stream)."""
    if not _PREPACK:
        return packs, None
    if packs is None:
        packs = {}
    key = (x.shape[0], x.shape[-1])
    if key not in packs:
        if len(packs) >= _PACKS_PER_LAYER:
            packs.pop(next(iter(packs)))
        packs[key] = pack_conv_weight(weight, stride, dilation, x)
    return packs, packs[key]


def conv_exact(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
               dilation: int, packed=None) -> torch.Tensor:
    """Valid conv1d of ``x [B, C, L]`` whose output at a position does not depend on ``L``.

    On CPU float32 this is always oneDNN's direct convolution, which computes every output
    position with the same reduction order whatever the signal's length or where it starts
    (tests check it for every layer shape of EnCodec, 1 and 2 threads); ``F.conv1d`` would switch
    kernels (oneDNN, im2col GEMM) by size and thread count. ``packed``
    (:func:`pack_conv_weight`) is the pre-reordered weight: one stream uses one or the other.
    """
    if x.shape[-1] < (weight.shape[-1] - 1) * dilation + 1:
        return x.new_zeros(x.shape[0], weight.shape[0], 0)
    if packed is not None:
        y = torch.ops.mkldnn._convolution_pointwise(x.contiguous()[:, :, None, :], packed, bias, [0, 0], [1, stride],
                                                    [1, dilation], 1, "none", [], "")
        return y[:, :, 0]
    if _onednn_ok(x, weight):
        return torch.mkldnn_convolution(x.contiguous(), weight, bias, [0], [stride], [dilation], 1)
    return F.conv1d(x, weight, bias, stride=stride, dilation=dilation)


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


# ---------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------
@dataclass
class _ConvState:
    previous: torch.Tensor | None = None  # last ``kernel - stride`` input samples [B, C, ctx]
    started: bool = True  # reflect padding: False until the first samples arrived
    pending: torch.Tensor | None = None  # reflect padding: input held back until then [B, C, T]
    final: bool = False  # set by the codec's flush: the next input is the end of the signal
    packs: dict | None = None  # (batch, input length) -> oneDNN-blocked weight (pack_conv_weight)
    rows_plan: tuple | None = None  # conv1d_stream_rows' constants, once per stream (see _rows_plan)


class StreamingConv1d(StreamingModule):
    """Conv1d with EnCodec padding (causal or centred), optional time group norm, streamable.

    Streaming (causal only) takes ``[B, C_in, T]`` (``T`` a multiple of the stride) and returns
    ``[B, C_out, T / stride]``: the last ``k - s`` input samples are kept as the next call's
    context and :func:`conv_exact` makes each output independent of the chunking. With
    ``pad_mode="reflect"`` the first output waits for ``k - s + 1`` input samples (the left
    reflect pad is made of them) and the right reflect pad that completes the last frame is
    applied when ``final`` is set (end of stream).
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

    @property
    def start_delay(self) -> int:
        """Input samples held back at the start of a stream (reflect padding), 0 otherwise."""
        ctx = self.effective_kernel - self.stride
        return ctx + 1 if self.pad_mode == "reflect" and ctx > 0 else 0

    def _init_streaming_state(self, batch_size: int) -> _ConvState:
        return _ConvState(started=self.start_delay == 0)

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

    def _conv(self, window: torch.Tensor) -> torch.Tensor:
        state: _ConvState = self._streaming_state
        w, s, d = self.conv.weight, self.stride, self.conv.dilation[0]
        state.packs, packed = cached_pack(state.packs, w, s, d, window)
        bias = None if self.conv.bias is None else self.conv.bias.detach()
        return self.norm(conv_exact(window, w, bias, s, d, packed))

    def _forward_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C_in, T]`` (the next samples of the stream) -> ``[B, C_out, T / stride]``."""
        state: _ConvState = self._streaming_state
        s = self.stride
        context = self.effective_kernel - s
        if not state.started:  # reflect padding: hold the first samples back
            x = x if state.pending is None else torch.cat([state.pending, x], -1)
            if not state.final:
                if x.shape[-1] < self.start_delay:
                    state.pending = x
                    return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
                state.previous = x[..., 1: context + 1].flip(-1)  # EnCodec's left reflect pad
            else:  # the whole signal is shorter than the pad: offline rules (zeros first)
                state.pending, state.started = None, True
                if x.shape[-1] == 0:
                    return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
                return self._conv(pad1d(x, context, (-x.shape[-1]) % s, "reflect"))
            state.pending, state.started = None, True
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        if context == 0:
            window = x
        else:
            if state.previous is None:
                state.previous = x.new_zeros(x.shape[0], x.shape[1], context)
            window = torch.cat([state.previous, x], -1)
            state.previous = window[..., window.shape[-1] - context:].contiguous()
        if state.final and self.pad_mode == "reflect":
            extra = (-x.shape[-1]) % s  # EnCodec's right pad that completes the last frame
            if extra:
                window = pad1d(window, 0, extra, "reflect")
        return self._conv(window)


@dataclass
class _ConvTrState:
    tail: torch.Tensor | None = None  # the last ``reach - 1`` steps' output pieces, bias not yet added
    pointwise: torch.Tensor | None = None  # the kernel as a 1x1 conv, built once per stream
    rows_linear: "RowsLinear | None" = None  # convtr_stream_rows' packed GEMM, once per inference stream
    packs: dict | None = None  # its oneDNN-blocked copies per input length (cached_pack)


class StreamingConvTranspose1d(StreamingModule):
    """ConvTranspose1d with EnCodec's trimming (causal: trim right), streamable.

    Streaming computes each input step's ``k`` output samples with a pointwise convolution
    (:func:`conv_exact`: independent of the chunk's length) and overlap-adds the pieces of the
    ``reach`` steps that cover an output sample in a fixed order (the causal trim keeps the last
    steps' overhang as state), so any chunking gives the same bits.
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
        """``x``: ``[B, C_in, T]`` -> ``[B, C_out, T * stride]``."""
        state: _ConvTrState = self._streaming_state
        k, s = self.convtr.kernel_size[0], self.stride
        out_ch = self.convtr.out_channels
        b, c_in, steps = x.shape
        reach = -(-k // s)  # input steps one output sample gathers from
        if state.pointwise is None:  # [out, reach, s] output channels per input step
            w = self.convtr.weight.detach()  # [in, out, k]
            state.pointwise = F.pad(w, (0, reach * s - k)).permute(1, 2, 0).reshape(out_ch * reach * s, c_in, 1).contiguous()
        if state.tail is None:
            state.tail = x.new_zeros(b, out_ch, reach, s, reach - 1)
        if steps == 0:
            return x.new_zeros(b, out_ch, 0)
        state.packs, packed = cached_pack(state.packs, state.pointwise, 1, 1, x)
        z = conv_exact(x, state.pointwise, None, 1, 1, packed).view(b, out_ch, reach, s, steps)
        if reach > 1:
            z = torch.cat([state.tail, z], -1)  # [B, out, reach, s, reach - 1 + T]
            state.tail = z[..., steps:].contiguous()
        off = reach - 1
        out = z[:, :, 0, :, off:].clone() if reach > 1 else z[:, :, 0]
        for r in range(1, reach):  # fixed order: identical rounding in every chunking
            out += z[:, :, r, :, off - r: off - r + steps]
        out = out.transpose(-1, -2).reshape(b, out_ch, steps * s)  # [B, out, T, s] -> samples
        if self.convtr.bias is not None:
            out = out + self.convtr.bias.detach()[:, None]
        return self.norm(out)


# ---------------------------------------------------------------------------------------------
# LSTM and residual block
# ---------------------------------------------------------------------------------------------
class StreamingLSTM(StreamingModule):
    """Multi-layer LSTM with a skip connection over ``[B, C, T]`` (EnCodec's ``SLSTM``).

    Streaming runs the recurrence step by step with the hidden state carried across chunks
    (:func:`lstm_stream_rows`); the input projections of all steps are one row-invariant
    product, so the numbers never depend on how many steps came together.
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
        # [B, C, N] at the frame rate: one step per frame, on time-major rows
        return lstm_stream_rows(self, x.transpose(1, 2)).transpose(1, 2)


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


# ---------------------------------------------------------------------------------------------
# The SEANet codec's exact path on time-major rows (what Codec's streaming and offline passes run)
# ---------------------------------------------------------------------------------------------
# Every layer of a stream step runs on time-major activations ``[B, T, C]`` (rows = time steps):
# a convolution is one GEMM of its im2col rows (a strided view of the input: stride-1 and
# strided kernels alike, a pointwise conv is the input itself) against the weight reshaped to
# ``[C_out, k * C_in]`` and packed once for oneDNN (its AVX-512 fp32 kernel: ~2x MKL's on AMD
# CPUs, where MKL takes its AVX2 path); the residual addition is the GEMM's fused ``add``
# post-op; a transposed conv is one GEMM to every step's ``k`` outputs (its bias folded into the
# first ``s`` of them) plus one overlap-add; the LSTM's input projections of all steps are one
# GEMM and the recurrence a fixed-shape step. Each row's bits are independent of how many rows
# come together (:class:`RowsLinear`), and ELU is position-independent (:func:`elu_rows`), so any
# chunking gives the offline bits. The layers' own ``_forward_streaming`` (channel-major) stay as
# they were; the per-layer stream state objects are shared (``previous``/``pending`` are kept as
# ``[B, C, T]`` views of time-major tensors).
_RUNTIME_PACKS = torch.utils.weak.WeakIdKeyDictionary()  # parameter -> {key: (versions, value)}
_MIN_COLUMNS = 16  # narrower outputs (the decoder's last conv: 1 channel) are padded with zero weights


def _derived(source: torch.Tensor, key, tensors: tuple, build):
    """``build()`` cached on ``source`` under ``key`` while ``tensors`` keep their values (data
    pointer, version counter, shape); built afresh for inference-mode tensors (no version counter)."""
    versions = _versions(*tensors)
    if versions is None:
        return build()
    slot = _RUNTIME_PACKS.get(source)
    if slot is None:
        slot = _RUNTIME_PACKS[source] = {}
    hit = slot.get(key)
    if hit is not None and hit[0] == versions:
        return hit[1]
    value = build()
    slot[key] = (versions, value)
    return value


class RowsLinear:
    """``x [M, K] -> x @ W.T + b (+ add)`` with every row's bits independent of ``M``.

    CPU float32 without gradients: oneDNN's linear on its blocked float32 weight (``add`` fused
    as a binary post-op; a lone row computed twice, as :class:`PackedLinear`), whatever the
    weights' values (no float16-weight kernel: the codec's GEMMs are compute-bound). Otherwise
    :func:`rows_matmul` (differentiable). ``N`` under 16 is padded with zero weight rows.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.out_features = n = weight.shape[0]
        tensors = [t for t in (weight, bias) if t is not None]
        self.kind, self.op = "rows", None
        fast = (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
                and torch.backends.mkldnn.is_available())
        pad = max(0, _MIN_COLUMNS - n)
        self.padded_features = n + pad
        w = weight if not fast else weight.detach()
        b = bias if bias is None or not fast else bias.detach()
        if pad:
            w = F.pad(w, (0, 0, 0, pad))
            b = None if b is None else F.pad(b, (0, pad))
        self.bias = b
        if fast:
            try:
                self.op, self.kind = torch.ops.mkldnn._reorder_linear_weight(w.contiguous()), "onednn"
                return
            except (RuntimeError, AttributeError, NotImplementedError):  # a torch without the op
                pass
        self.weight_t = w.t()

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None, fixed_rows: bool = False) -> torch.Tensor:
        """``[M, K]`` -> ``[M, N]``; ``add`` ``[M, N]`` is added after the bias. ``fixed_rows``: the
        caller always passes the same ``M`` (a recurrence step), so no row needs duplicating."""
        m, n = x.shape[0], self.out_features
        if m == 0:
            return x.new_zeros(0, n)
        if self.kind == "onednn":
            if add is not None and self.padded_features != n:
                add = F.pad(add, (0, self.padded_features - n))
            y = onednn_linear(x, self.op, self.bias, add, duplicate=not fixed_rows)
            return y[:, :n] if y.shape[1] != n else y
        y = rows_matmul(x.contiguous(), self.weight_t, self.bias)
        y = y[:, :n] if y.shape[1] != n else y
        return y if add is None else y + add


def elu_rows(x: torch.Tensor) -> torch.Tensor:
    """ELU, position-independent like :func:`elu_exact`; on one thread in a single vectorised call
    over the whole multiple of 64 elements (one thread never splits it) and one for the tail."""
    if torch.get_num_threads() != 1 or x.dtype != torch.float32 or x.device.type != "cpu":
        return elu_exact(x)
    flat = x.contiguous().view(-1)
    n = flat.numel()
    full = n - n % _VEC_BLOCK
    if full == n:
        return F.elu(flat).view_as(x)
    out = torch.empty_like(flat)
    if full:
        torch._C._nn.elu(flat[:full], out=out[:full])
    tail = flat.new_zeros(_VEC_BLOCK)
    tail[: n - full] = flat[full:]
    out[full:] = F.elu(tail)[: n - full]
    return out.view_as(x)


def _tm(x: torch.Tensor | None) -> torch.Tensor | None:
    """A ``[B, C, T]`` view kept in a stream state -> the time-major tensor ``[B, T, C]``."""
    return None if x is None else x.transpose(1, 2)


def _reflect_tm(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """EnCodec's reflect padding (:func:`pad1d`) of a time-major ``[B, T, C]``."""
    return pad1d(x.transpose(1, 2), left, right, "reflect").transpose(1, 2).contiguous()


def conv_linear(m: "StreamingConv1d") -> RowsLinear:
    """The conv's weight as ``[C_out, k * C_in]`` (tap-major, matching im2col rows), packed once
    per weight version."""
    w, b = m.conv.weight, m.conv.bias
    key = ("conv", torch.is_grad_enabled())
    return _derived(w, key, (w, b), lambda: RowsLinear(w.permute(0, 2, 1).reshape(w.shape[0], -1), b))


def im2col_rows(x: torch.Tensor, kernel: int, stride: int, dilation: int) -> torch.Tensor:
    """Time-major ``[B, L, C]`` -> the rows of a valid conv's patches ``[B * T_out, kernel * C]``
    (``x`` itself for a pointwise conv)."""
    b, length, c = x.shape
    reach = (kernel - 1) * dilation + 1
    steps = (length - reach) // stride + 1
    x = x.contiguous()
    if kernel == 1 and stride == 1:
        return x.view(b * length, c)
    view = x.as_strided((b, steps, kernel, c), (length * c, stride * c, dilation * c, 1))
    return view.reshape(b * steps, kernel * c)


def tap_linear(m: "StreamingConv1d") -> RowsLinear:
    """A stride-1 conv with few output channels as a GEMM to every tap's outputs ``[k, C_out]``
    (the bias on tap 0), packed once per weight version."""
    w, b = m.conv.weight, m.conv.bias  # [out, in, k]

    def build():
        bias = None if b is None else torch.cat([b, b.new_zeros((w.shape[2] - 1) * w.shape[0])])
        return RowsLinear(w.permute(2, 0, 1).reshape(-1, w.shape[1]), bias)

    return _derived(w, ("taps", torch.is_grad_enabled()), (w, b), build)


def _rows_plan(m: "StreamingConv1d") -> tuple:
    """``(kernel, stride, dilation, out_channels, effective kernel, taps, packed linear)`` of a
    conv for :func:`conv_rows`; kept in the stream's state when gradients are off (the weights do
    not change within an inference stream), so a 20 ms chunk does not look them up again."""
    state = m._streaming_state
    grad = torch.is_grad_enabled()
    if not grad and state is not None and state.rows_plan is not None:
        return state.rows_plan
    k, s, d = m.conv.kernel_size[0], m.stride, m.conv.dilation[0]
    out_ch = m.conv.out_channels
    taps = s == 1 and k > 1 and out_ch < _MIN_COLUMNS
    plan = (k, s, d, out_ch, (k - 1) * d + 1, taps, tap_linear(m) if taps else conv_linear(m))
    if not grad and state is not None:
        state.rows_plan = plan
    return plan


def conv_rows(m: "StreamingConv1d", window: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """Valid conv of a time-major window ``[B, L, C_in]`` -> ``[B, T_out, C_out]`` (``add``: same
    shape as the output, added in the GEMM's epilogue).

    One GEMM of the im2col rows; a stride-1 conv with fewer than 16 output channels (the
    decoder's last, one channel) instead multiplies the input rows by every tap at once and sums
    the taps' shifted outputs in order (no ``k``-times copy of the input, no padded columns)."""
    b, length, _ = window.shape
    k, s, d, out_ch, reach, taps, linear = _rows_plan(m)
    if length < reach:
        return window.new_zeros(b, 0, out_ch)
    if taps:
        steps = length - reach + 1
        window = window.contiguous()
        z = linear(window.view(b * length, -1)).view(b, length, k, out_ch)
        y = torch.add(z[:, :steps, 0], z[:, d: d + steps, 1])
        for j in range(2, k):  # fixed order: identical rounding in every chunking
            y.add_(z[:, j * d: j * d + steps, j])
        return y if add is None else y + add
    rows = im2col_rows(window, k, s, d)
    y = linear(rows, None if add is None else add.reshape(rows.shape[0], -1))
    return y.view(b, -1, out_ch)


def conv1d_stream_rows(m: "StreamingConv1d", x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """:meth:`StreamingConv1d._forward_streaming` on time-major rows: ``[B, T, C_in]`` (the next
    samples of the stream) -> ``[B, T / stride, C_out]``, the same state rules (context, reflect
    start-up, the final right pad). ``add`` (the output's shape) is added in the epilogue."""
    state: _ConvState = m._streaming_state
    _, s, _, out_ch, reach, _, _ = _rows_plan(m)
    context = reach - s
    if not state.started:  # reflect padding: hold the first samples back
        pending = _tm(state.pending)
        x = x if pending is None else torch.cat([pending, x], 1)
        if not state.final:
            if x.shape[1] < m.start_delay:
                state.pending = x.transpose(1, 2)
                return x.new_zeros(x.shape[0], 0, out_ch)
            state.previous = x[:, 1: context + 1].flip(1).transpose(1, 2)  # EnCodec's left reflect pad
        else:  # the whole signal is shorter than the pad: offline rules (zeros first)
            state.pending, state.started = None, True
            if x.shape[1] == 0:
                return x.new_zeros(x.shape[0], 0, out_ch)
            return conv_rows(m, _reflect_tm(x, context, (-x.shape[1]) % s), add)
        state.pending, state.started = None, True
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], 0, out_ch)
    if context == 0:
        window = x
    else:
        previous = _tm(state.previous)
        if previous is None:
            previous = x.new_zeros(x.shape[0], context, x.shape[2])
        window = torch.cat([previous, x], 1)
        state.previous = window[:, window.shape[1] - context:].transpose(1, 2)
    if state.final and m.pad_mode == "reflect":
        extra = (-x.shape[1]) % s  # EnCodec's right pad that completes the last frame
        if extra:
            window = _reflect_tm(window, 0, extra)
    return conv_rows(m, window, add)


def convtr_linear(m: "StreamingConvTranspose1d") -> RowsLinear:
    """The transposed conv as a GEMM ``[C_in] -> [reach, s, C_out]`` (every input step's output
    pieces; the bias on the first ``s``, the step's own samples), packed once per weight version."""
    w, b = m.convtr.weight, m.convtr.bias  # [in, out, k]
    k, s = m.convtr.kernel_size[0], m.stride
    reach = -(-k // s)

    def build():
        pieces = F.pad(w, (0, reach * s - k)).view(w.shape[0], w.shape[1], reach, s)
        w2 = pieces.permute(2, 3, 1, 0).reshape(reach * s * w.shape[1], w.shape[0])  # [(r, j, out), in]
        bias = None
        if b is not None:
            bias = torch.cat([b.repeat(s), b.new_zeros((reach - 1) * s * b.shape[0])])
        return RowsLinear(w2, bias)

    return _derived(w, ("convtr", torch.is_grad_enabled()), (w, b), build)


def convtr_stream_rows(m: "StreamingConvTranspose1d", x: torch.Tensor) -> torch.Tensor:
    """:meth:`StreamingConvTranspose1d._forward_streaming` on time-major rows: ``[B, T, C_in]`` ->
    ``[B, T * s, C_out]``; output sample ``t s + j`` is ``sum_r z[t - r, r, j]`` in the order
    ``r = 0, 1, ...`` (the last ``reach - 1`` steps' pieces are the state)."""
    state: _ConvTrState = m._streaming_state
    k, s = m.convtr.kernel_size[0], m.stride
    out_ch = m.convtr.out_channels
    b, steps, c_in = x.shape
    reach = -(-k // s)
    if steps == 0:
        return x.new_zeros(b, 0, out_ch)
    linear = state.rows_linear
    if linear is None or torch.is_grad_enabled():
        linear = convtr_linear(m)
        state.rows_linear = None if torch.is_grad_enabled() else linear
    z = linear(x.reshape(b * steps, c_in)).view(b, steps, reach, s, out_ch)
    if reach == 1:
        return z.view(b, steps * s, out_ch)
    if state.tail is None:
        state.tail = x.new_zeros(b, reach - 1, reach, s, out_ch)
    if reach == 2:  # EnCodec's k = 2 s: one shifted addition, no copy of z
        out = x.new_empty(b, steps, s, out_ch)
        torch.add(z[:, :1, 0], state.tail[:, :, 1], out=out[:, :1])
        if steps > 1:
            torch.add(z[:, 1:, 0], z[:, :-1, 1], out=out[:, 1:])
        state.tail = z[:, steps - 1:].clone()
    else:
        zz = torch.cat([state.tail, z], 1)  # [B, reach - 1 + T, reach, s, out]
        state.tail = zz[:, steps:].clone()
        off = reach - 1
        out = zz[:, off:, 0] + zz[:, off - 1: off - 1 + steps, 1]
        for r in range(2, reach):  # fixed order: identical rounding in every chunking
            out = out + zz[:, off - r: off - r + steps, r]
    return out.reshape(b, steps * s, out_ch)


def residual_stream_rows(m: "ResidualUnit", x: torch.Tensor) -> torch.Tensor:
    """:class:`ResidualUnit` on time-major rows: ``shortcut(x) + conv1(elu(conv_k(elu(x))))``, the
    addition fused into the last GEMM."""
    elu1, conv_k, elu2, conv_1 = m.block
    if not (isinstance(elu1, ELU) and isinstance(elu2, ELU)):
        raise TypeError("residual_stream_rows expects ELU, conv, ELU, conv")
    h = elu_rows(conv1d_stream_rows(conv_k, elu_rows(x)))
    skip = x if isinstance(m.shortcut, nn.Identity) else conv1d_stream_rows(m.shortcut, x)
    return conv1d_stream_rows(conv_1, h, add=skip)


def _lstm_packs(m: "StreamingLSTM", layer: int):
    """A layer's input projection (both biases folded in, row-invariant) and its recurrent weight
    transposed ``[dim, 4 * dim]`` for the per-step product."""
    lstm = m.lstm
    w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
    b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
    grad = torch.is_grad_enabled()

    def build():
        w_hh_t = w_hh.t() if grad else w_hh.detach().t().contiguous()
        return RowsLinear(w_ih, b_ih + b_hh), w_hh_t

    return _derived(w_ih, ("lstm", grad), (w_ih, w_hh, b_ih, b_hh), build)


def lstm_stream_rows(m: "StreamingLSTM", x: torch.Tensor) -> torch.Tensor:
    """:class:`StreamingLSTM` on time-major rows ``[B, N, C]`` (one step per frame) with the
    hidden state carried across calls: the input projections of all steps are one row-invariant
    GEMM; each step is one fixed-shape ``addmm`` on the recurrent weight (the same ``[B, dim]``
    product in every chunking, so chunked and whole passes agree bit for bit: BLAS's gemv reads
    the 4 MB weight faster than oneDNN's single-row kernel) and the gate arithmetic into
    buffers allocated once per call."""
    batch, steps, dim = x.shape
    if steps == 0:
        return x
    stream = m._streaming_state
    state = stream["hc"]
    layer_in = x
    inplace = not torch.is_grad_enabled()
    packs = stream.get("packs") if inplace else None  # an inference stream's packs, looked up once
    if packs is None:
        packs = [_lstm_packs(m, layer) for layer in range(m.lstm.num_layers)]
        if inplace:
            stream["packs"] = packs
    for layer in range(m.lstm.num_layers):
        lin_ih, w_hh_t = packs[layer]
        proj = lin_ih(layer_in.reshape(batch * steps, dim)).view(batch, steps, 4 * dim)
        h, c = state[layer] if state[layer] is not None else (x.new_zeros(batch, dim), x.new_zeros(batch, dim))
        out = x.new_empty(batch, steps, dim)
        for t in range(steps):
            gates = torch.addmm(proj[:, t], h, w_hh_t)
            if inplace:  # sigmoid over all four gates, then the cell candidate's slot overwritten by tanh
                act = torch.sigmoid(gates)
                cell = torch.tanh(gates[:, 2 * dim: 3 * dim], out=act[:, 2 * dim: 3 * dim])
                c = torch.addcmul(act[:, dim: 2 * dim] * c, act[:, :dim], cell)
                h = torch.mul(act[:, 3 * dim:], torch.tanh(c), out=out[:, t])
            else:
                act = torch.sigmoid(gates)
                c = torch.addcmul(act[:, dim: 2 * dim] * c, act[:, :dim], torch.tanh(gates[:, 2 * dim: 3 * dim]))
                h = act[:, 3 * dim:] * torch.tanh(c)
                out[:, t] = h
        state[layer] = (h, c)
        layer_in = out
    return layer_in + x


def seanet_stream_rows(layers, x: torch.Tensor) -> torch.Tensor:
    """A SEANet layer list (convs, residual units, ELUs, transposed convs, LSTM) streamed on
    time-major rows ``[B, T, C]``."""
    for layer in layers:
        if isinstance(layer, StreamingConv1d):
            x = conv1d_stream_rows(layer, x)
        elif isinstance(layer, ResidualUnit):
            x = residual_stream_rows(layer, x)
        elif isinstance(layer, ELU):
            x = elu_rows(x)
        elif isinstance(layer, StreamingConvTranspose1d):
            x = convtr_stream_rows(layer, x)
        elif isinstance(layer, StreamingLSTM):
            x = lstm_stream_rows(layer, x)
        else:
            raise TypeError(f"seanet_stream_rows: no time-major path for {type(layer).__name__}")
    return x
