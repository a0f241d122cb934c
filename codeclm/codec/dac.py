"""DAC (Descript Audio Codec, Kumar et al. 2023) behind the codec interface.

Layout (as ``descript-audio-codec`` and ``transformers``' ``DacModel``): a non-causal conv
encoder of Snake activations and weight-normed convolutions (residual units with dilations 1, 3,
9, strided downsampling convs), a factorised residual VQ (each codebook projects the residual to
a low-dimensional space, looks up the nearest L2-normalised entry, projects back) and a mirrored
transposed-conv decoder ending in ``tanh``. Weights are stored fused (no weight norm), mono.

>>> codec = Codec.from_hf("path/to/dac_44khz")       # a transformers DacModel folder (or object)
>>> codes = codec.encode(wav, bandwidth=6.0)          # [B, 1, T] -> LongTensor [B, n_q, ceil(T / hop)]
>>> audio = codec.decode(codes)                       # -> [B, 1, F * hop]
>>> codec.save_pretrained("dac44")                    # config.json (model_type codeclm-dac) + safetensors

Streaming. Every layer is centred (non-causal), so a frame's code depends on audio *after* the
frame and a decoded sample on codes after it: chunk-in/chunk-out at one-frame latency cannot
equal the offline result, and ``streaming()`` is refused. The receptive fields are finite
(no LSTM), though: :meth:`DacCodec.context_frames` gives how many frames of context each side
a frame needs, and long inputs are encoded / decoded in overlapping windows with that much
context, which computes the same function as one whole-signal pass (equal up to float rounding
of different tensor lengths; the tests check codes are identical) with memory bounded by the
window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.codec.base import CompressionModel, from_hf, hf_model_type
from codeclm.errors import ConfigError
from codeclm.pretrained import SavedConfig
from codeclm.streaming import StreamingError

__all__ = ["DacCodec", "DacConfig", "snake"]

MODEL_TYPE = "codeclm-dac"
DILATIONS = (1, 3, 9)
_SIZE_LIMITS = {"sample_rate": (1, 1_000_000), "encoder_dim": (1, 4096), "decoder_dim": (1, 1 << 16),
                "n_q": (1, 1024), "bins": (2, 1 << 16), "codebook_dim": (1, 4096), "window_frames": (1, 1 << 20)}


@dataclass
class DacConfig(SavedConfig):
    """DAC hyper-parameters (names follow ``transformers.DacConfig`` where they exist).

    ``ratios`` are the encoder's downsampling ratios (the decoder uses them reversed); their
    product is the hop length. ``window_frames``: inputs longer than this many frames are
    processed in overlapping windows of this size (memory bound; same result).
    """

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "DAC codec"

    name: str = "dac"
    sample_rate: int = 44_100
    encoder_dim: int = 64
    ratios: list[int] = field(default_factory=lambda: [2, 4, 8, 8])
    decoder_dim: int = 1536
    n_q: int = 9
    bins: int = 1024
    codebook_dim: int = 8
    window_frames: int = 512

    def __post_init__(self) -> None:
        self.ratios = [int(r) for r in self.ratios]
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"DAC config: {msg}")

        for key, (lo, hi) in _SIZE_LIMITS.items():  # before any layer is built: a corrupt config allocates nothing
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise bad(f"{key} must be an integer in {lo}..{hi}, got {value!r}")
        if not self.ratios or len(self.ratios) > 8 or any(not 1 <= r <= 64 for r in self.ratios):
            raise bad(f"ratios must be 1 to 8 integers in 1..64, got {self.ratios}")
        if self.encoder_dim * 2 ** len(self.ratios) > 1 << 16:
            raise bad(f"encoder_dim * 2^len(ratios) = {self.encoder_dim * 2 ** len(self.ratios)} channels is too many")
        if 2 ** int(math.log2(self.bins)) != self.bins:
            raise bad(f"bins must be a power of two, got {self.bins}")
        if self.decoder_dim % 2 ** len(self.ratios):
            raise bad(f"decoder_dim {self.decoder_dim} must be divisible by 2**{len(self.ratios)}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.ratios))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The weights' shapes of a DAC of this config, built on the meta device (no memory)."""
        with torch.device("meta"):
            model = DacCodec(self)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    @property
    def latent_dim(self) -> int:
        return self.encoder_dim * 2 ** len(self.ratios)


# -- layers ----------------------------------------------------------------------------------------
def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake activation ``x + sin(alpha x)^2 / (alpha + 1e-9)``, in one buffer when no grad is needed.

    Same operations in the same order as the reference (so the same bits), but in place: one
    temporary instead of four on these memory-bound full-rate activations.
    """
    inv = (alpha + 1e-9).reciprocal()
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return x + inv * torch.sin(alpha * x).pow(2)
    s = torch.mul(alpha, x)
    s.sin_()
    s.mul_(s)
    s.mul_(inv)
    return s.add_(x)


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, self.alpha)


class ResidualUnit(nn.Module):
    """Snake -> dilated conv (k7) -> Snake -> conv (k1), plus the input."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.snake1 = Snake(dim)
        self.conv1 = nn.Conv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(dim)
        self.conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, stride: int):  # dim: output channels (input has dim // 2)
        super().__init__()
        self.res = nn.ModuleList(ResidualUnit(dim // 2, d) for d in DILATIONS)
        self.snake = Snake(dim // 2)
        self.conv = nn.Conv1d(dim // 2, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.res:
            x = unit(x)
        return self.conv(self.snake(x))


class DecoderBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.snake = Snake(in_dim)
        self.conv = nn.ConvTranspose1d(in_dim, out_dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
        self.res = nn.ModuleList(ResidualUnit(out_dim, d) for d in DILATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.snake(x))
        for unit in self.res:
            x = unit(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        self.conv_in = nn.Conv1d(1, cfg.encoder_dim, 7, padding=3)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.encoder_dim * 2 ** (i + 1), s) for i, s in enumerate(cfg.ratios))
        self.snake = Snake(cfg.latent_dim)
        self.conv_out = nn.Conv1d(cfg.latent_dim, cfg.latent_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x)
        return self.conv_out(self.snake(x))


class Decoder(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        d = cfg.decoder_dim
        self.conv_in = nn.Conv1d(cfg.latent_dim, d, 7, padding=3)
        self.blocks = nn.ModuleList(DecoderBlock(d // 2 ** i, d // 2 ** (i + 1), s)
                                    for i, s in enumerate(reversed(cfg.ratios)))
        out_dim = d // 2 ** len(cfg.ratios)
        self.snake = Snake(out_dim)
        self.conv_out = nn.Conv1d(out_dim, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x)
        return torch.tanh(self.conv_out(self.snake(x)))


class FactorizedVQ(nn.Module):
    """One codebook: project to ``codebook_dim``, nearest L2-normalised entry, project back."""

    def __init__(self, latent_dim: int, codebook_dim: int, bins: int):
        super().__init__()
        self.in_proj = nn.Conv1d(latent_dim, codebook_dim, 1)
        self.out_proj = nn.Conv1d(codebook_dim, latent_dim, 1)
        self.codebook = nn.Embedding(bins, codebook_dim)

    def encode(self, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[B, T]`` of ``residual`` ``[B, D, T]`` and their contribution ``[B, D, T]``.

        The distance is written exactly as the reference computes it (including its ``+ |c|^2``,
        a constant for unit codebook rows up to rounding) so ties break the same way.
        """
        projected = self.in_proj(residual)
        b, d, t = projected.shape
        enc = F.normalize(projected.permute(0, 2, 1).reshape(b * t, d))
        book = F.normalize(self.codebook.weight)
        dist = -(enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t()) + book.pow(2).sum(1, keepdim=True).t()
        codes = dist.max(1)[1].reshape(b, t)
        quantized = self.codebook(codes).transpose(1, 2)
        return codes, self.out_proj(projected + (quantized - projected))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.codebook(codes).transpose(1, 2))


class ResidualVQ(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        self.layers = nn.ModuleList(FactorizedVQ(cfg.latent_dim, cfg.codebook_dim, cfg.bins) for _ in range(cfg.n_q))

    def encode(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        residual, codes = latent, []
        for layer in self.layers[:n_q]:
            c, contribution = layer.encode(residual)
            residual = residual - contribution
            codes.append(c)
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for i in range(codes.shape[1]):
            out = out + self.layers[i].decode(codes[:, i])
        return out


# -- receptive fields ------------------------------------------------------------------------------
def _conv_back(lo: int, hi: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    """Input interval a conv's outputs ``[lo, hi]`` read."""
    return lo * stride - padding, hi * stride - padding + dilation * (kernel - 1)


def _convtr_back(lo: int, hi: int, kernel: int, stride: int, padding: int):
    """Input interval a transposed conv's outputs ``[lo, hi]`` read."""
    return -((-(lo + padding - kernel + 1)) // stride), (hi + padding) // stride


def _residual_back(lo: int, hi: int):
    for d in reversed(DILATIONS):
        lo, hi = lo - 3 * d, hi + 3 * d
    return lo, hi


def encoder_receptive_field(cfg: DacConfig) -> tuple[int, int]:
    """Input samples ``[lo, hi]`` that latent frame 0 depends on (frame 0 owns ``[0, hop)``)."""
    lo, hi = _conv_back(0, 0, 3, padding=1)
    for s in reversed(cfg.ratios):
        lo, hi = _conv_back(lo, hi, 2 * s, s, math.ceil(s / 2))
        lo, hi = _residual_back(lo, hi)
    return _conv_back(lo, hi, 7, padding=3)


def decoder_receptive_field(cfg: DacConfig) -> tuple[int, int]:
    """Code frames ``[lo, hi]`` that the samples of frame 0 (``[0, hop)``) depend on."""
    lo, hi = _conv_back(0, cfg.hop_length - 1, 7, padding=3)
    for s in cfg.ratios:  # decoder blocks in reverse order = encoder ratios in order
        lo, hi = _residual_back(lo, hi)
        lo, hi = _convtr_back(lo, hi, 2 * s, s, math.ceil(s / 2))
    return _conv_back(lo, hi, 7, padding=3)


# -- the codec -------------------------------------------------------------------------------------
class DacCodec(CompressionModel):
    """DAC encoder + factorised RVQ + decoder; offline (windowed for long inputs), mono."""

    model_type = MODEL_TYPE
    config_class = DacConfig
    dtype_tensor = "encoder.conv_in.weight"

    def __init__(self, config: DacConfig | None = None, **overrides):
        super().__init__()
        self.config = config or DacConfig(**overrides)
        self.encoder = Encoder(self.config)
        self.quantizer = ResidualVQ(self.config)
        self.decoder = Decoder(self.config)
        lo, hi = encoder_receptive_field(self.config)
        hop = self.config.hop_length
        self._enc_context = max(-(-(-lo) // hop), -(-(hi - hop + 1) // hop), 0)
        dlo, dhi = decoder_receptive_field(self.config)
        self._dec_context = max(-dlo, dhi, 0)

    # -- interface (sample_rate, hop_length, num_codebooks, cardinality: the config's) -----------
    @property
    def channels(self) -> int:
        return 1

    def context_frames(self) -> tuple[int, int]:
        """Frames of context each side that (encoder, decoder) outputs of one frame depend on."""
        return self._enc_context, self._dec_context

    @property
    def lookahead(self) -> float:
        """Seconds of future audio a decoded sample depends on (through its codes): why no streaming."""
        _, enc_hi = encoder_receptive_field(self.config)
        _, dec_hi = decoder_receptive_field(self.config)
        return (enc_hi - self.hop_length + 1 + dec_hi * self.hop_length) / self.sample_rate

    def _init_streaming_state(self, batch_size: int):
        raise StreamingError(
            f"DAC is non-causal: a frame's code depends on {self.lookahead * 1000:.0f} ms of later audio, so "
            "chunked streaming cannot equal the offline result; encode/decode whole signals (long ones run in "
            "overlapping windows automatically)")

    def encode(self, wav: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
        """Audio ``[B, 1, T]`` -> codes ``[B, n_q, ceil(T / hop)]`` (zero-padded to whole frames)."""
        wav = self.check_wav(wav, self._dtype)
        n_q = self.num_codebooks_for(bandwidth)
        hop = self.hop_length
        wav = F.pad(wav, (0, (-wav.shape[-1]) % hop))
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            return self._windowed(wav.shape[-1] // hop, self._enc_context, 1,
                                  lambda a, b: self.quantizer.encode(self.encoder(wav[..., a * hop: b * hop]), n_q))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, F]`` (K <= n_q) -> audio ``[B, 1, F * hop]``.

        Layouts with an odd stride (the 24 kHz one) produce a few samples fewer than ``F * hop``
        (``L * s - 1`` per odd transposed conv); the missing end is filled with zeros.
        """
        codes = self.check_codes(codes)
        frames, hop = codes.shape[-1], self.hop_length
        if frames == 0:  # no frames: no audio (as Codec, FrameCodec)
            return torch.zeros(codes.shape[0], self.channels, 0, dtype=self._dtype, device=codes.device)
        dec_dtype = self.decoder.conv_in.weight.dtype  # see set_decoder_dtype
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            def run(a: int, b: int) -> torch.Tensor:
                out = self.decoder(self.quantizer.decode(codes[..., a:b]).to(dec_dtype)).to(self._dtype)
                return F.pad(out, (0, (b - a) * hop - out.shape[-1]))
            return self._windowed(frames, self._dec_context, hop, run)

    def set_decoder_dtype(self, dtype: torch.dtype) -> DacCodec:
        """Run the decoder in ``dtype`` while the encoder and quantizer keep theirs (codes unchanged;
        ``decode`` still returns the codec's dtype). ``torch.bfloat16`` is the fast CPU option where
        the CPU has AMX/AVX512-BF16 (its convolutions run ~3x faster; ``benchmarks/dac_speed.py
        --bf16-decode`` measures the speed and the audio's SNR against fp32). Like ``Module.half()``
        the cast rounds the decoder's weights: load the folder again to get fp32 back. Returns the codec."""
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"set_decoder_dtype: expected a floating-point torch dtype, got {dtype!r}")
        self.decoder.to(dtype)
        return self

    def _windowed(self, frames: int, context: int, out_per_frame: int, run) -> torch.Tensor:
        """``run(a, b)`` over frames ``[a, b)`` at once, or window by window with ``context`` frames
        of overlap each side when there are more than ``window_frames`` (same function, bounded memory)."""
        window = self.config.window_frames
        if frames <= window + 2 * context:
            return run(0, frames)
        pieces = []
        for start in range(0, frames, window):
            end = min(frames, start + window)
            a, b = max(0, start - context), min(frames, end + context)
            out = run(a, b)
            pieces.append(out[..., (start - a) * out_per_frame: (end - a) * out_per_frame])
        return torch.cat(pieces, -1)

    # -- folders: CompressionModel's save_pretrained / from_pretrained (no shipped default) -------
    @classmethod
    def from_hf(cls, model_or_folder) -> DacCodec:
        """A ``transformers`` DacModel (object or saved folder) converted to a DacCodec."""
        found = hf_model_type(model_or_folder)
        if found != "dac":
            raise ConfigError(f"expected a transformers DAC model (model_type 'dac'), got {found!r}")
        return from_hf(model_or_folder)
