"""A frame-rate codec: STFT features -> ConvNeXt -> RVQ -> ConvNeXt -> inverse-STFT head.

Every layer after the front end runs at the code frame rate (50 Hz at 24 kHz / hop 480), so the
model is cheap to train on a CPU and has no transposed convolutions (the SEANet decoder's
upsampling stacks leave tonal lines at multiples of their rates). Layout:

* **front end** (fixed, no weights): causal STFT log-power features. A long window of two hops
  (``hop + 1`` bins: pitch) and four short windows of half a hop per frame (time detail), each
  ending at the frame's last sample, computed as a convolution with a fixed windowed DFT basis.
* **encoder**: linear projection, ``encoder_layers`` causal ConvNeXt blocks (depthwise conv over
  past frames, LayerNorm, MLP, layer scale; Vocos' block made causal), projection to the
  quantizer's ``dimension``.
* **quantizer**: the residual VQ of :mod:`codeclm.codec.quantizer` (EMA codebooks, k-means init,
  dead-code revival, quantizer dropout over ``target_bandwidths``).
* **decoder**: projection, ``decoder_layers`` causal ConvNeXt blocks, and a Vocos-style head that
  predicts each frame's log-magnitude and phase for a window of two hops; the inverse real FFT
  of each frame, Hann-windowed, is overlap-added. A frame's window covers its own hop and the one
  before, so the audio of hop ``t`` is complete once frame ``t + 1`` is decoded: the decoder
  looks one frame ahead (latency two frames, 40 ms at 50 Hz). The last hop of a signal takes
  the last frame's unwindowed output.

Exact streaming. Inference (``encode``/``decode``, offline or inside ``streaming()``) always runs
the frame-synchronous path whose kernels give a frame the same bits whatever else is in the
call (the GEMMs on pre-packed weights of :class:`~codeclm.codec.layers.PackedLinear`, FBGEMM's
float16-weight kernel for a float16 folder's weights, else oneDNN's; the front end's windowed
DFTs as real FFTs, :func:`~codeclm.codec.layers.fft_rows`; :func:`~codeclm.codec.layers.pointwise_exact`;
element-wise arithmetic in a fixed order; row-wise LayerNorm), so any chunking gives the offline
bits. Training runs the same maths with the fast batched kernels (``forward``). The packed
weights are cached across streams until the weights change; the rest of a stream's constants
(detached weights, codebooks) are read at its first call. The last hop of a stream is emitted by
the ``decode`` call that reaches the last frame encoded before the encoder's ``flush()``, or, in a
decode-only stream, by ``flush_decoder()``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.codec.base import EMA_STATS, CompressionModel
from codeclm.codec.config import RVQBandwidths
from codeclm.codec.harmonic import (PITCH_TOKEN_FEATURES, HarmonicHead, analyse_pitch, harmonic_amplitudes,
                                    pitch_feature_values, pitch_features, pitch_from_tokens, pitch_token_features,
                                    pitch_tokens)
from codeclm.codec.layers import PackedLinear, fft_rows, pack_linear, pointwise_exact, stream_plan
from codeclm.codec.model import CodecOutput
from codeclm.codec.quantizer import ResidualVectorQuantizer
from codeclm.errors import ConfigError
from codeclm.pretrained import SavedConfig, fused_state_dict
from codeclm.streaming import StreamingError, StreamingModule

__all__ = ["FrameCodec", "FrameCodecConfig"]

MODEL_TYPE = "codeclm-frame-codec"
_OFFLINE_BLOCK_FRAMES = 500  # frames per call of the offline frame-synchronous pass (bounds memory)
_LOG_EPS = 1e-6
_PITCH_SCALE = 4.0  # pitch features (in [0, 1]) x 4: an input a trained encoder gains learns 4x sooner
_MAX_LOG_MAG = 8.0  # exp(8) ~ 3000: far above any real frame's DFT magnitude, bounds a wild output
_SIZE_LIMITS = {"sample_rate": (1, 1_000_000), "hop_length": (8, 1 << 16), "encoder_dim": (1, 8192),
                "encoder_layers": (0, 64), "decoder_dim": (1, 8192), "decoder_layers": (0, 64),
                "kernel_size": (1, 63), "mlp_ratio": (1, 16), "dimension": (1, 8192), "bins": (2, 1 << 16),
                "kmeans_iters": (0, 100_000)}


@dataclass
class FrameCodecConfig(RVQBandwidths, SavedConfig):
    """Hyper-parameters of :class:`FrameCodec` (``config.json``)."""

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "frame codec"

    name: str = "codeclm-frame-codec"
    sample_rate: int = 24_000
    channels: int = 1
    hop_length: int = 480  # samples per code frame (a multiple of 4)
    encoder_dim: int = 256
    encoder_layers: int = 6
    decoder_dim: int = 384
    decoder_layers: int = 8
    kernel_size: int = 7  # depthwise conv over this many frames (the current one and the past)
    mlp_ratio: int = 3
    dimension: int = 128  # quantized latent
    latent_norm: bool = True  # normalise each latent frame (no affine): bounded codebook targets
    phase_features: bool = False  # also give the encoder the long window's phase (compressed complex STFT)
    harmonics: int = 0  # > 0: a harmonic oscillator branch with this many partials (codeclm.codec.harmonic)
    pitch_features: bool = False  # also give the encoder the long window's YIN pitch (voicing, log f0, periodicity)
    f0_min: float = 50.0  # its pitch range (Hz)
    f0_max: float = 600.0
    # the pitch codebook: code row 1 is the input's YIN pitch (0 unvoiced, else log f0 on `bins - 1`
    # steps; codeclm.codec.harmonic.pitch_tokens), the residual VQ fills the other rows; the decoder
    # reads it and the harmonic branch plays it, harmonic-plus-noise on the inverse-STFT head's
    # spectrum with a harmonic share per band, `harmonic_bands` bands (HarmonicHead.mix; needs harmonics > 0)
    pitch_codebook: bool = False
    harmonic_bands: int = 16
    # the inverse-STFT head's phase gets a pseudo-random turn per frame and bin (inference: a fixed
    # hash of the frame's index in the stream, so exact; training: drawn at random): a stationary
    # input then no longer gives the same frame every hop, which adds spectral lines at multiples
    # of the frame rate
    noise_phase: bool = False
    bins: int = 1024
    target_bandwidths: list[float] = field(default_factory=lambda: [1.5, 3.0, 6.0, 12.0])
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.5

    def __post_init__(self) -> None:
        self.target_bandwidths = [float(b) for b in self.target_bandwidths]
        self.validate()

    @property
    def n_features(self) -> int:
        long = (self.hop_length + 1) * (3 if self.phase_features else 1)
        return long + 4 * (self.hop_length // 4 + 1) + (3 if self.pitch_features else 0)

    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"frame codec config: {msg}")

        for key, (lo, hi) in _SIZE_LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise bad(f"{key} must be an integer in {lo}..{hi}, got {value!r}")
        if self.channels != 1:
            raise bad(f"channels must be 1 (mono), got {self.channels}")
        if self.hop_length % 4:
            raise bad(f"hop_length must be a multiple of 4, got {self.hop_length}")
        if self.bins != 2 ** self.bits_per_codebook:
            raise bad(f"bins must be a power of two, got {self.bins}")
        if not self.target_bandwidths or not all(math.isfinite(b) and b > 0 for b in self.target_bandwidths):
            raise bad(f"target_bandwidths must be positive and finite, got {self.target_bandwidths}")
        if self.n_q > 1024:
            raise bad(f"target_bandwidths need {self.n_q} codebooks (at most 1024)")
        if isinstance(self.harmonics, bool) or not isinstance(self.harmonics, int) or not 0 <= self.harmonics <= 256:
            raise bad(f"harmonics must be an integer in 0..256, got {self.harmonics!r}")
        if not (math.isfinite(self.f0_min) and math.isfinite(self.f0_max)
                and 0 < self.f0_min < self.f0_max < self.sample_rate / 2):
            raise bad(f"need 0 < f0_min < f0_max < sample_rate / 2, got {self.f0_min} and {self.f0_max}")
        if self.pitch_codebook and not self.harmonics:
            raise bad("pitch_codebook needs the harmonic branch (harmonics > 0) to play the pitch")
        if self.pitch_codebook and self.n_q < 2:
            raise bad("pitch_codebook needs at least two codebooks (the pitch and one residual VQ)")
        if isinstance(self.harmonic_bands, bool) or not isinstance(self.harmonic_bands, int) \
                or not 2 <= self.harmonic_bands <= 1024:
            raise bad(f"harmonic_bands must be an integer in 2..1024, got {self.harmonic_bands!r}")
        if (self.harmonics or self.pitch_features) and 2 * self.hop_length - math.ceil(self.sample_rate / self.f0_min) < \
                math.ceil(self.sample_rate / self.f0_min) // 2:
            raise bad(f"f0_min {self.f0_min} Hz needs a longer hop than {self.hop_length} (its pitch tracker "
                      "looks at two hops)")
        for key in ("ema_decay", "dead_code_threshold"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0) or (key == "ema_decay" and value > 1):
                raise bad(f"{key} must be a finite number >= 0{' and <= 1' if key == 'ema_decay' else ''}, got {value}")

    @property
    def rvq_layers(self) -> int:
        """Residual VQ codebooks: every code row but the pitch codebook's."""
        return self.n_q - 1 if self.pitch_codebook else self.n_q

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = FrameCodec(self)
        return {k: tuple(v.shape) for k, v in fused_state_dict(model).items()}

    def optional_weights(self) -> tuple[str, ...]:
        return EMA_STATS


# ---------------------------------------------------------------------------------------------
# Layers. Activations are time-major [B, T, C]; each layer has a fast path (training) and an
# exact frame-synchronous path (inference, streaming) computing the same function.
# ---------------------------------------------------------------------------------------------
def _linear_plan(layer: nn.Linear) -> PackedLinear:
    """A linear layer's packed weights for :func:`_linear_exact` (cached across streams until the
    weights change: :func:`~codeclm.codec.layers.pack_linear`)."""
    return pack_linear(layer.weight, layer.bias)


def _linear_exact(x: torch.Tensor, linear: PackedLinear) -> torch.Tensor:
    """``linear`` on ``x [B, T, C]``, every row rounded independently of ``T``."""
    b, t, c = x.shape
    return linear(x.reshape(b * t, c)).view(b, t, linear.out_features)


def _hann(n: int) -> torch.Tensor:
    """Periodic Hann window of ``n`` samples (the one in :func:`dft_basis`), float32."""
    k = torch.arange(n, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * k / n)).float()


def dft_basis(n_fft: int) -> torch.Tensor:
    """Periodic-Hann-windowed real DFT as conv weights ``[2 * (n_fft // 2 + 1), 1, n_fft]`` (cos, then -sin)."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
    angle = 2 * math.pi * k * n / n_fft
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    return basis[:, None, :].float()


class Frontend(StreamingModule):
    """Causal STFT log-power features ``[B, 1, F * hop]`` -> ``[B, F, n_features]`` (no weights)."""

    def __init__(self, hop: int, phase: bool = False, pitch: tuple[int, float, float] | None = None):
        super().__init__()
        self.hop, self.short, self.phase = hop, hop // 4, phase
        self.pitch = pitch  # (sample_rate, f0_min, f0_max): append the long window's YIN pitch features
        self.register_buffer("long_basis", dft_basis(2 * hop), persistent=False)
        self.register_buffer("short_basis", dft_basis(2 * self.short), persistent=False)
        self.register_buffer("long_window", _hann(2 * hop), persistent=False)
        self.register_buffer("short_window", _hann(2 * self.short), persistent=False)

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {"previous": None}

    @staticmethod
    def _log_power(spec: torch.Tensor, exact: bool) -> torch.Tensor:
        half = spec.shape[1] // 2
        re, im = spec[:, :half], spec[:, half:]
        power = re * re + im * im + _LOG_EPS
        return 0.25 * (pointwise_exact(torch.log, power) if exact else torch.log(power))

    @staticmethod
    def _with_phase(re: torch.Tensor, im: torch.Tensor, log_power: torch.Tensor, exact: bool, dim: int):
        """``[log power, X |X|^-0.7 (re, im)]``: the phase, weighted by a compressed magnitude
        (``log_power`` is ``0.25 log |X|^2``, so ``|X|^-0.7 = exp(-1.4 log_power)``)."""
        scale = pointwise_exact(torch.exp, -1.4 * log_power) if exact else torch.exp(-1.4 * log_power)
        return torch.cat([log_power, re * scale, im * scale], dim)

    def _features(self, window: torch.Tensor, exact: bool, pitch: torch.Tensor | None = None) -> torch.Tensor:
        """``window``: the hop of context followed by ``n`` hops -> ``[B, n, n_features]``; ``pitch``:
        the long windows' pitch features when the caller has them already (training)."""
        if exact:
            return self._features_exact(window)
        conv = lambda x, w, s: F.conv1d(x, w, stride=s)  # noqa: E731
        spec = conv(window, self.long_basis, self.hop)  # [B, 2 (hop + 1), n]
        long = self._log_power(spec, exact)  # [B, hop + 1, n]
        if self.phase:
            half = spec.shape[1] // 2
            long = self._with_phase(spec[:, :half], spec[:, half:], long, exact, 1)
        start = self.hop - self.short  # the short windows need half a short window of context
        short = self._log_power(conv(window[..., start:], self.short_basis, self.short), exact)  # [B, k, 4n]
        b, k, m = short.shape
        short = short.view(b, k, m // 4, 4).permute(0, 3, 1, 2).reshape(b, 4 * k, m // 4)
        features = torch.cat([long, short], 1).transpose(1, 2)
        return self._with_pitch(features, window, False, pitch)

    def _with_pitch(self, features: torch.Tensor, window: torch.Tensor, exact: bool,
                    pitch: torch.Tensor | None = None) -> torch.Tensor:
        """``features`` and, with ``pitch``, each long window's :func:`~codeclm.codec.harmonic.pitch_features`
        (x ``_PITCH_SCALE``) after them (``pitch``: those features, computed by the caller)."""
        if self.pitch is None:
            return features
        if pitch is None:
            frames = window[:, 0].float().unfold(-1, 2 * self.hop, self.hop)  # the long windows [B, n, 2 hop]
            pitch = pitch_features(frames, *self.pitch, exact=exact)
        return torch.cat([features, (pitch * _PITCH_SCALE).to(features.dtype)], -1)

    @staticmethod
    def _log_power_fft(frames: torch.Tensor, window: torch.Tensor, phase: bool = False) -> torch.Tensor:
        """``0.25 * log(|rfft(frames * window)|^2 + eps)`` per frame: the windowed DFT of the basis
        convolution, each frame's bits independent of the call (FFT rows, element-wise ops);
        ``phase``: with the compressed complex spectrum after it (:meth:`_with_phase`)."""
        spec = torch.view_as_real(fft_rows(torch.fft.rfft, frames * window))
        re, im = spec[..., 0], spec[..., 1]
        log_power = 0.25 * pointwise_exact(torch.log, re * re + im * im + _LOG_EPS)
        return Frontend._with_phase(re, im, log_power, True, -1) if phase else log_power

    def _features_exact(self, window: torch.Tensor) -> torch.Tensor:
        """:meth:`_features` for inference: the same windowed DFTs as inverse-free real FFTs."""
        b = window.shape[0]
        long = self._log_power_fft(window[:, 0].unfold(-1, 2 * self.hop, self.hop), self.long_window,
                                   self.phase)  # [B, n, hop + 1] (x 3 with the phase)
        start = self.hop - self.short  # the short windows need half a short window of context
        short = self._log_power_fft(window[:, 0, start:].unfold(-1, 2 * self.short, self.short),
                                    self.short_window)  # [B, 4n, k]
        return self._with_pitch(torch.cat([long, short.reshape(b, long.shape[1], -1)], -1), window, True)

    def forward(self, wav: torch.Tensor, exact: bool = False, pitch: torch.Tensor | None = None,
                with_windows: bool = False):
        """``pitch`` (offline only): the long windows' pitch features, if the caller has them;
        ``with_windows``: also return the long analysis windows ``[B, n, 2 hop]`` (float32)."""
        if not self.is_streaming:
            window = F.pad(wav, (self.hop, 0))
            features = self._features(window, exact, pitch)
        else:
            state = self._streaming_state
            previous = state["previous"]
            if previous is None:
                previous = wav.new_zeros(wav.shape[0], wav.shape[1], self.hop)
            window = torch.cat([previous, wav], -1)
            state["previous"] = window[..., -self.hop:].contiguous()
            features = self._features(window, True)
        if with_windows:
            return features, window[:, 0].float().unfold(-1, 2 * self.hop, self.hop)
        return features


class ConvNeXtBlock(StreamingModule):
    """Causal ConvNeXt block (Vocos' with a past-only depthwise conv): x + s * MLP(LN(dwconv(x)))."""

    def __init__(self, dim: int, kernel: int, mlp_ratio: int, layer_scale: float):
        super().__init__()
        self.kernel = kernel
        self.dwconv = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {"previous": None, "plan": None}

    def forward(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        return self._exact(x) if exact else self._fast(x)

    def _build_plan(self) -> tuple:
        return (self.dwconv.weight.detach()[:, 0].t().contiguous()[:, None],  # taps [k, 1, C]
                self.dwconv.bias.detach(), self.norm.weight.detach(), self.norm.bias.detach(),
                _linear_plan(self.pwconv1), pack_linear(self.pwconv2.weight, self.pwconv2.bias, self.gamma))

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(F.pad(x.transpose(1, 2), (self.kernel - 1, 0)), self.dwconv.weight, self.dwconv.bias,
                     groups=self.dwconv.groups).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + self.gamma * y

    def _exact(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        k = self.kernel
        taps, dw_bias, ln_weight, ln_bias, lin1, lin2 = stream_plan(self, self._build_plan)
        state = self._streaming_state
        previous = state["previous"] if state is not None else None
        if previous is None:
            previous = x.new_zeros(b, k - 1, c)
        xp = torch.cat([previous, x], 1)  # [B, k - 1 + n, C]
        if state is not None:
            state["previous"] = xp[:, n:]
        # depthwise conv: the k products of every frame in one element-wise op, then added tap
        # after tap (explicit adds: torch's sum over the taps reorders its tail elements)
        windows = xp.as_strided((b, k, n, c), (xp.shape[1] * c, c, c, 1), xp.storage_offset())
        products = windows * taps  # [B, k, n, C]
        y = products[:, 0] + products[:, 1] if k > 1 else products[:, 0].clone()
        for j in range(2, k):
            y += products[:, j]
        y += dw_bias
        y = F.layer_norm(y, (c,), ln_weight, ln_bias, self.norm.eps)
        h = lin1(y.view(b * n, c), gelu=True)
        return lin2(h, add=x.reshape(b * n, c)).view(b, n, c)  # x + gamma * pwconv2(h)


class _Stack(StreamingModule):
    """Input projection, ConvNeXt blocks, final LayerNorm (+ optional output projection)."""

    def __init__(self, d_in: int, dim: int, layers: int, kernel: int, mlp_ratio: int, d_out: int | None,
                 out_norm: bool = False):
        super().__init__()
        self.out_norm = out_norm
        self.proj_in = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList([ConvNeXtBlock(dim, kernel, mlp_ratio, 1.0 / max(1, layers))
                                     for _ in range(layers)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj_out = nn.Linear(dim, d_out) if d_out is not None else None

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {"plan": None}

    def forward(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        if exact:
            return self._exact(x)
        x = self.proj_in(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.proj_out is not None:
            x = self.proj_out(x)
        if self.out_norm:  # every frame at unit RMS: the encoder cannot outrun its EMA codebooks
            x = F.layer_norm(x, x.shape[-1:], eps=1e-5)
        return x

    def _build_plan(self) -> tuple:
        return (_linear_plan(self.proj_in), self.norm.weight.detach(), self.norm.bias.detach(),
                None if self.proj_out is None else _linear_plan(self.proj_out))

    def _exact(self, x: torch.Tensor) -> torch.Tensor:
        proj_in, norm_weight, norm_bias, proj_out = stream_plan(self, self._build_plan)
        x = _linear_exact(x, proj_in)
        for block in self.blocks:
            x = block._exact(x)
        x = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, self.norm.eps)
        if proj_out is not None:
            x = _linear_exact(x, proj_out)
        if self.out_norm:
            x = F.layer_norm(x, x.shape[-1:], eps=1e-5)
        return x


def noise_turns(first_frame: int, frames: int, bins: int, device=None) -> torch.Tensor:
    """Pseudo-random phase turns in ``[0, 2 pi)`` for ``frames`` frames from stream index
    ``first_frame`` and ``bins`` bins -> ``[frames, bins]`` float32: an integer hash of (frame, bin)
    (products kept below 2^62, masked to 31 bits), so a frame's turns never depend on the call."""
    f = torch.arange(first_frame, first_frame + frames, device=device, dtype=torch.int64)[:, None]
    k = torch.arange(bins, device=device, dtype=torch.int64)[None]
    x = ((f & 0x7FFFFF) * 7919 + k * 104729 + 12345) & 0x7FFFFFFF
    for _ in range(3):
        x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & 0x7FFFFFFF
    return x.float() * (2 * math.pi / 2 ** 31)


class ISTFTHead(StreamingModule):
    """Per frame: log-magnitude and phase of a two-hop window -> inverse real FFT -> Hann window.

    ``forward`` returns the windowed blocks ``[B, F, 2 * hop]`` and the raw (unwindowed) second
    halves ``[B, F, hop]``; :meth:`overlap_add` turns them into audio.
    """

    def __init__(self, dim: int, hop: int):
        super().__init__()
        self.hop = hop
        self.n_bins = hop + 1
        self.out = nn.Linear(dim, 2 * self.n_bins)
        n = torch.arange(2 * hop, dtype=torch.float64)
        self.register_buffer("window", (0.5 - 0.5 * torch.cos(math.pi * n / hop)).float(), persistent=False)

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {"pending": None, "pending_raw": None, "plan": None}

    def forward(self, x: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.synthesize(*self.parts(x, exact), exact=exact)

    def parts(self, x: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, F, D]`` -> each frame's log-magnitude and phase ``[B, F, n_bins]`` (float32:
        the synthesis runs in float32 even under autocast)."""
        if exact:
            (plan,) = stream_plan(self, lambda: (_linear_plan(self.out),))
            h = _linear_exact(x, plan).float()
        else:
            h = self.out(x).float()
        return h[..., : self.n_bins].clamp(max=_MAX_LOG_MAG), h[..., self.n_bins:]

    def synthesize(self, log_mag: torch.Tensor, phase: torch.Tensor, exact: bool = False,
                   share: torch.Tensor | None = None, turns: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse real FFT of each frame, Hann-windowed -> ``(blocks, raw halves)``; ``share``: a
        factor on each bin's magnitude (the harmonic branch takes the rest, ``HarmonicHead.mix``);
        ``turns``: added to the phase (``noise_phase``)."""
        if turns is not None:
            phase = phase + turns
        mag = pointwise_exact(torch.exp, log_mag) if exact else torch.exp(log_mag)
        if share is not None:
            mag = mag * share
        if exact:
            spec = torch.complex(mag * pointwise_exact(torch.cos, phase), mag * pointwise_exact(torch.sin, phase))
            frames = fft_rows(torch.fft.irfft, spec, n=2 * self.hop)  # [B, F, 2 hop]
        else:
            frames = torch.fft.irfft(torch.complex(mag * torch.cos(phase), mag * torch.sin(phase)), n=2 * self.hop)
        return frames * self.window, frames[..., self.hop:]

    def overlap_add(self, blocks: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Offline: hop ``t`` = falling half of frame ``t`` + rising half of frame ``t + 1``; the last
        hop is the last frame's raw second half. ``[B, F, 2 hop]`` -> ``[B, 1, F * hop]``."""
        hop = self.hop
        out = torch.cat([blocks[:, :-1, hop:] + blocks[:, 1:, :hop], raw[:, -1:]], 1)
        return out.reshape(out.shape[0], 1, -1)

    def stream(self, blocks: torch.Tensor, raw: torch.Tensor, final: bool) -> torch.Tensor:
        """Streaming: the hops completed by these frames (each needs the next frame), and at the
        end (``final``) the last one. Same arithmetic as :meth:`overlap_add`."""
        state = self._streaming_state
        hop = self.hop
        b, n = blocks.shape[:2]
        pieces = []
        pending, pending_raw = state["pending"], state["pending_raw"]
        if n:
            falling = blocks[:, :, hop:]  # frame t's second half completes hop t with frame t + 1's first
            if pending is not None:
                falling = torch.cat([pending[:, None], falling], 1)
            m = falling.shape[1] - 1  # hops completed: n, or n - 1 at the stream's start
            if m:
                pieces.append(falling[:, :-1] + blocks[:, n - m:, :hop])
            pending, pending_raw = blocks[:, -1, hop:], raw[:, -1]
        if final and pending is not None:
            pieces.append(pending_raw[:, None])
            pending = pending_raw = None
        state["pending"], state["pending_raw"] = pending, pending_raw
        if not pieces:
            return blocks.new_zeros(b, 1, 0)
        return torch.cat(pieces, 1).reshape(b, 1, -1)


class FrameCodec(CompressionModel):
    """STFT/ConvNeXt encoder, RVQ, ConvNeXt/iSTFT decoder at the frame rate; exact streaming."""

    model_type = MODEL_TYPE
    config_class = FrameCodecConfig
    shipped_default = "codec"
    dtype_tensor = "quantizer.layers.0.embed"
    # a training run may add the harmonic branch and the pitch features to a folder without them (init_from)
    extension_keys = ("harmonics", "pitch_features", "f0_min", "f0_max", "pitch_codebook", "harmonic_bands", "noise_phase")

    def __init__(self, config: FrameCodecConfig | None = None, **overrides):
        super().__init__()
        config = config or FrameCodecConfig(**overrides)
        self.config = c = config
        self.frontend = Frontend(c.hop_length, c.phase_features,
                                 (c.sample_rate, c.f0_min, c.f0_max) if c.pitch_features else None)
        self.encoder = _Stack(c.n_features, c.encoder_dim, c.encoder_layers, c.kernel_size, c.mlp_ratio, c.dimension,
                              out_norm=c.latent_norm)
        self.quantizer = ResidualVectorQuantizer(
            c.dimension, c.rvq_layers, c.bins, decay=c.ema_decay, kmeans_init=c.kmeans_init, kmeans_iters=c.kmeans_iters,
            dead_code_threshold=c.dead_code_threshold)
        self.decoder = _Stack(c.dimension, c.decoder_dim, c.decoder_layers, c.kernel_size, c.mlp_ratio, None)
        self.head = ISTFTHead(c.decoder_dim, c.hop_length)
        self.harmonic = (HarmonicHead(c.decoder_dim, c.hop_length, c.sample_rate, c.harmonics, c.f0_min, c.f0_max,
                                      c.harmonic_bands if c.pitch_codebook else 0) if c.harmonics else None)
        # the pitch code's features, added to the quantized latent (zero at first: a decoder trained
        # without them starts from its own function)
        self.pitch_embed = nn.Linear(PITCH_TOKEN_FEATURES, c.dimension) if c.pitch_codebook else None
        self.apply(_init)
        if self.pitch_embed is not None:
            nn.init.zeros_(self.pitch_embed.weight)

    # -- interface (sample_rate, channels, hop_length, num_codebooks, cardinality: the config's) -----
    @property
    def target_bandwidths(self) -> list[float]:
        return list(self.config.target_bandwidths)

    @property
    def streamable(self) -> bool:
        return True

    @property
    def latency(self) -> float:
        """A frame's codes need its samples, and its audio the next frame: two frames."""
        return 2 * self.hop_length / self.sample_rate

    # -- encode / decode ---------------------------------------------------------------------------
    def encode(self, wav: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
        """Audio ``[B, 1, T]`` -> codes ``[B, n_q, ceil(T / hop)]``; inside ``streaming()`` the codes
        of the frames completed so far."""
        wav = self.check_wav(wav, self._dtype)
        n_q = self.num_codebooks_for(bandwidth)
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            if self.is_streaming:
                return self._encode_stream(wav, n_q)
            wav = F.pad(wav, (0, (-wav.shape[-1]) % self.hop_length))
            block = _OFFLINE_BLOCK_FRAMES * self.hop_length
            with self.streaming(wav.shape[0]):
                return torch.cat([self._encode_stream(wav[..., i: i + block], n_q)
                                  for i in range(0, wav.shape[-1], block)], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, F]`` (K <= n_q) -> audio ``[B, 1, F * hop]``. Inside ``streaming()``: the hops
        completed so far (one frame behind, see the module notes)."""
        codes = self.check_codes(codes)
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            if self.is_streaming:
                return self._decode_stream(codes)
            if codes.shape[-1] == 0:
                return torch.zeros(codes.shape[0], self.channels, 0, dtype=self._dtype, device=codes.device)
            with self.streaming(codes.shape[0]):
                outs = [self._decode_stream(codes[..., i: i + _OFFLINE_BLOCK_FRAMES])
                        for i in range(0, codes.shape[-1], _OFFLINE_BLOCK_FRAMES)]
                outs.append(self.flush_decoder())
            return torch.cat(outs, -1)

    def flush(self, bandwidth: float | None = None, *, n_q: int | None = None) -> torch.Tensor:
        """End of an encoding stream: codes of the last partial frame (zero-padded, as offline). The
        ``decode`` call that reaches the stream's last encoded frame also emits the final hop."""
        if not self.is_streaming:
            raise StreamingError("flush() is only meaningful inside a streaming() block")
        n_q = n_q or self.num_codebooks_for(bandwidth)
        state = self._streaming_state
        buf = state["buffer"]
        if state["encoder_done"]:
            raise StreamingError("flush() was already called for this stream (reset_streaming() starts a new one)")
        if buf is None or buf.shape[-1] == 0:
            codes = torch.zeros(self._streaming_batch_size, n_q, 0, dtype=torch.long)
        else:
            state["buffer"] = None
            with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
                codes = self._encode_stream(F.pad(buf, (0, self.hop_length - buf.shape[-1])), n_q)
        state["encoder_done"] = True
        return codes

    def flush_decoder(self) -> torch.Tensor:
        """End of a decoding stream: the last hop's audio ``[B, 1, hop]`` (empty if nothing is held)."""
        if not self.is_streaming:
            raise StreamingError("flush_decoder() is only meaningful inside a streaming() block")
        self._streaming_state["decoder_final"] = True
        empty = torch.zeros(self._streaming_batch_size, 0, 0, dtype=torch.long)
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            return self._decode_stream(empty)

    def _init_streaming_state(self, batch_size: int) -> dict:
        # frames encoded / decoded so far: once the encoder has flushed, the decode call that
        # reaches its last frame is the decoder's last (whatever the grouping of the calls)
        return {"buffer": None, "encoder_done": False, "frames_encoded": 0, "frames_decoded": 0,
                "decoder_final": False, "decoder_done": False, "codebooks": None}

    def _quantize_exact(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        """Residual VQ of ``latent [B, n, D]`` -> codes ``[B, n_q, n]``: the quantizer's nearest-code
        rule (``argmin |e|^2 - 2 x.e``) with the dot products on the codebooks' packed
        copies (:class:`~codeclm.codec.layers.PackedLinear`, row-invariant), read once per stream."""
        state = self._streaming_state
        if state["codebooks"] is None:
            state["codebooks"] = [(layer.embed, layer._sqnorm(), pack_linear(layer.embed))
                                  for layer in self.quantizer.layers]
        b, t, d = latent.shape
        residual = latent.reshape(b * t, d).to(self._dtype)
        codes = []
        for embed, sqnorm, packed in state["codebooks"][:n_q]:
            c = (sqnorm - 2 * packed(residual)).argmin(-1)
            residual = residual - F.embedding(c, embed)
            codes.append(c.view(b, t))
        return torch.stack(codes, 1)

    def _encode_stream(self, wav: torch.Tensor, n_q: int) -> torch.Tensor:
        frames = self._whole_frames(wav)
        if frames.shape[-1] == 0:
            return torch.zeros(wav.shape[0], n_q, 0, dtype=torch.long, device=wav.device)
        c = self.config
        if c.pitch_codebook:
            features, windows = self.frontend(frames, with_windows=True)
        else:
            features = self.frontend(frames)
        latent = self.encoder(features, exact=True)  # [B, n, D]
        self._streaming_state["frames_encoded"] += latent.shape[1]
        if not c.pitch_codebook:
            return self._quantize_exact(latent, n_q)
        f0, voiced, _ = analyse_pitch(windows, c.sample_rate, c.f0_min, c.f0_max, exact=True)
        return self._with_pitch_row(self._quantize_exact(latent, n_q - 1),
                                    pitch_tokens(f0, voiced, c.f0_min, c.f0_max, c.bins, exact=True))

    @staticmethod
    def _with_pitch_row(rvq: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
        """Residual-VQ codes ``[B, K, F]`` and pitch codes ``[B, F]`` -> ``[B, K + 1, F]``, the pitch
        as row 1 (row 0 stays the first, coarsest VQ codebook, the one an AR LM predicts first)."""
        return torch.cat([rvq[:, :1], pitch[:, None], rvq[:, 1:]], 1)

    @staticmethod
    def _split_pitch_row(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_with_pitch_row`'s inverse; a single row has no pitch (unvoiced)."""
        if codes.shape[1] < 2:
            return codes, torch.zeros_like(codes[:, 0])
        return torch.cat([codes[:, :1], codes[:, 2:]], 1), codes[:, 1]

    def _decode_stream(self, codes: torch.Tensor) -> torch.Tensor:
        self._check_stream_batch(codes.shape[0])
        state = self._streaming_state
        if state["decoder_done"]:
            if codes.shape[-1] == 0:  # e.g. flush()'s empty codes, decoded after the last frame: nothing to add
                return torch.zeros(codes.shape[0], 1, 0, dtype=self._dtype, device=codes.device)
            raise StreamingError("decode() after the stream's last decode (flush); reset_streaming() starts a new one")
        state["frames_decoded"] += codes.shape[-1]
        final = state["decoder_final"] or (state["encoder_done"]
                                           and state["frames_decoded"] >= state["frames_encoded"])
        state["decoder_done"] = final
        c = self.config
        pitch = None
        if codes.shape[-1] == 0:
            blocks = torch.zeros(codes.shape[0], 0, 2 * self.hop_length, dtype=self._dtype, device=codes.device)
            raw = blocks[..., : self.hop_length]
            features = blocks.new_zeros(codes.shape[0], 0, c.decoder_dim)
            if c.pitch_codebook:
                pitch = (torch.zeros(codes.shape[0], 0, device=codes.device),
                         torch.zeros(codes.shape[0], 0, c.harmonics, device=codes.device))
        else:
            if c.pitch_codebook:
                codes, tokens = self._split_pitch_row(codes)
                pitch = pitch_from_tokens(tokens, c.f0_min, c.f0_max, c.bins, exact=True)
            latent = self.quantizer.decode(codes).transpose(1, 2).contiguous()  # [B, n, D]
            if c.pitch_codebook:
                (plan,) = stream_plan(self, lambda: (_linear_plan(self.pitch_embed),))
                latent = latent + _linear_exact(pitch_token_features(tokens, c.bins, exact=True).to(latent.dtype),
                                                plan)
            features = self.decoder(latent, exact=True)
            log_mag, phase = self.head.parts(features, exact=True)
            turns = (noise_turns(state["frames_decoded"] - codes.shape[-1], codes.shape[-1], self.head.n_bins,
                                 codes.device) if c.noise_phase else None)
            share = None
            if c.pitch_codebook:  # harmonic-plus-noise on the head's spectrum
                amps, share, _ = self.harmonic.mix(features, log_mag, *pitch, exact=True)
                pitch = (pitch[0], amps)
            blocks, raw = self.head.synthesize(log_mag, phase, exact=True, share=share, turns=turns)
        audio = self.head.stream(blocks, raw, final)
        if self.harmonic is not None:
            audio = audio + self.harmonic.stream(features, final, pitch)
        return audio

    # -- training ---------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, n_q: int | None = None, teacher_f0: bool = False) -> CodecOutput:
        """Training pass (fast kernels): encode, quantize (EMA updates in train mode), decode.
        ``teacher_f0``: the harmonic branch plays the input's YIN pitch on its voiced frames."""
        length = wav.shape[-1]
        c, hop = self.config, self.hop_length
        x = F.pad(wav, (0, (-length) % hop))
        pitch = None
        if self.harmonic is not None or c.pitch_features:  # one YIN pass for the front end and the losses
            windows = F.pad(x.float(), (hop, 0))[:, 0].unfold(-1, 2 * hop, hop)  # the long windows [B, F, 2 hop]
            target, voiced, periodicity = analyse_pitch(windows, c.sample_rate, c.f0_min, c.f0_max)
            if c.pitch_features:
                pitch = pitch_feature_values(target, voiced, periodicity, c.f0_min, c.f0_max)
        latent = self.encoder(self.frontend(x, pitch=pitch)).transpose(1, 2)  # [B, D, F]
        q = self.quantizer(latent, None if n_q is None else n_q - c.pitch_codebook)
        decoder_in = q.quantized.transpose(1, 2)
        codes, rows = q.codes, q.n_q
        if c.pitch_codebook:  # the decoder hears the pitch code, the oscillator plays it
            tokens = pitch_tokens(target, voiced, c.f0_min, c.f0_max, c.bins)
            decoder_in = decoder_in + self.pitch_embed(pitch_token_features(tokens, c.bins).to(decoder_in.dtype))
            codes, rows = self._with_pitch_row(q.codes, tokens), q.n_q + 1
            target, voiced = pitch_from_tokens(tokens, c.f0_min, c.f0_max, c.bins)
        features = self.decoder(decoder_in)
        log_mag, phase = self.head.parts(features)
        turns = (torch.rand(phase.shape, device=phase.device) * (2 * math.pi)  # the inference hash's distribution
                 if c.noise_phase else None)
        if c.pitch_codebook:  # harmonic-plus-noise on the head's spectrum (HarmonicHead.mix)
            amps, share, log_amp = self.harmonic.mix(features, log_mag, target, voiced)
            blocks, raw = self.head.synthesize(log_mag, phase, share=share, turns=turns)
            audio = self.head.overlap_add(blocks, raw) + self.harmonic.oscillate(target, amps)
            aux = self._harmonic_losses(windows, target, voiced, {"log_amp": log_amp})
            return CodecOutput(audio[..., :length], codes, q.commitment_loss, rows, latent, aux)
        blocks, raw = self.head.synthesize(log_mag, phase, turns=turns)
        audio = self.head.overlap_add(blocks, raw)
        aux = {}
        if self.harmonic is not None:
            harmonic, pred = self.harmonic(features, (target, voiced) if teacher_f0 else None)
            audio = audio + harmonic
            aux = self._harmonic_losses(windows, target, voiced, pred)
        return CodecOutput(audio[..., :length], codes, q.commitment_loss, rows, latent, aux)

    def _harmonic_losses(self, windows, target, voiced, pred) -> dict[str, torch.Tensor]:
        """The harmonic branch's supervised losses against the input's frames (two-hop analysis
        windows ``[B, F, 2 hop]``) and their YIN pitch: f0 (L1 in octaves, voiced frames), voicing
        (binary cross-entropy, x 0.1), log-amplitudes of the audible partials at YIN's pitch
        (:func:`~codeclm.codec.harmonic.harmonic_amplitudes`, L1 in nats on voiced frames, x 0.1)."""
        c = self.config
        amps = harmonic_amplitudes(windows, target, c.sample_rate, c.harmonics)
        audible = voiced[..., None] & self.harmonic.audible(target)
        amp_error = (pred["log_amp"] - torch.log(amps.clamp(min=1e-5))).abs()
        amp = 0.1 * (amp_error * audible).sum() / audible.sum().clamp(min=1)
        if c.pitch_codebook:  # the pitch is given: only the amplitudes are learned
            return {"amp": amp}
        count = voiced.sum().clamp(min=1)
        f0_error = (torch.log2(pred["f0"]) - torch.log2(target.clamp(min=c.f0_min))).abs()
        voicing = F.binary_cross_entropy_with_logits(pred["voicing_logit"], voiced.float())
        return {"f0": (f0_error * voiced).sum() / count, "voicing": 0.1 * voicing, "amp": amp}

    def sample_n_q(self, generator: torch.Generator | None = None) -> int:
        """Quantizer dropout: a random bandwidth from the config's targets, as codebooks."""
        choices = sorted({self.num_codebooks_for(b) for b in self.config.target_bandwidths})
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]

    def apply_weight_norm(self) -> FrameCodec:
        """No weight norm here (LayerNorm blocks); kept so the codec trainer treats every codec alike."""
        return self

    # -- folders: CompressionModel's save_pretrained(inference_only=...) ---------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FrameCodec:
        """CompressionModel's, cast to float32 (whatever the folder stores)."""
        return super().from_pretrained(folder, device).float()


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
