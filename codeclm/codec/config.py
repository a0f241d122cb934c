"""The codec's configuration: one dataclass, saved as ``config.json`` beside the weights."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from codeclm.codec.base import EMA_STATS
from codeclm.errors import ConfigError
from codeclm.pretrained import SavedConfig

MODEL_TYPE = "codeclm-codec"
_SIZE_LIMITS = {"sample_rate": (1, 1_000_000), "dimension": (1, 8192), "n_filters": (1, 4096),
                "n_residual_layers": (0, 16), "kernel_size": (1, 255), "last_kernel_size": (1, 255),
                "residual_kernel_size": (1, 255), "dilation_base": (1, 16), "compress": (1, 64),
                "lstm_layers": (0, 16), "bins": (2, 1 << 16), "kmeans_iters": (0, 100_000)}


class RVQBandwidths:
    """Bitrate arithmetic of an RVQ codec config with ``sample_rate``, ``hop_length``, ``bins`` and
    ``target_bandwidths`` (kbps): shared by every codeclm-trained codec's config."""

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_codebook(self) -> int:
        return int(math.log2(self.bins))

    @property
    def n_q(self) -> int:
        """Number of codebooks the largest target bandwidth needs (EnCodec's formula)."""
        per_q = math.ceil(self.frame_rate) * self.bits_per_codebook
        return max(1, int(1000 * max(self.target_bandwidths) // per_q))


@dataclass
class CodecConfig(RVQBandwidths, SavedConfig):
    """SEANet encoder/decoder + residual vector quantizer, as in EnCodec/SoundStream.

    ``ratios`` are the decoder's upsampling ratios (the encoder uses them reversed); their
    product is the hop length (samples per code frame). ``target_bandwidths`` (kbps) define the
    number of codebooks: ``n_q = 1000 * max(bandwidths) / (frame_rate * log2(bins))``.
    """

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "codec"

    name: str = "codeclm-codec"
    sample_rate: int = 24_000
    channels: int = 1
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    causal: bool = True
    pad_mode: str = "constant"  # "constant" streams exactly; "reflect" is EnCodec's (offline only)
    norm: str = "weight_norm"  # "weight_norm" (fused at inference), "time_group_norm", "none"
    trim_right_ratio: float = 1.0
    conv_shortcut: bool = True
    # quantizer
    bins: int = 1024
    target_bandwidths: list[float] = field(default_factory=lambda: [1.5, 3.0, 6.0, 12.0, 24.0])
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 50
    dead_code_threshold: float = 2.0
    # offline chunking with per-chunk loudness normalisation (EnCodec 48 kHz)
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None

    def __post_init__(self) -> None:
        self.ratios = [int(r) for r in self.ratios]
        self.target_bandwidths = [float(b) for b in self.target_bandwidths]
        self.validate()

    # -- derived quantities --------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        return int(math.prod(self.ratios))

    @property
    def chunk_length(self) -> int | None:
        return None if self.chunk_length_s is None else int(self.chunk_length_s * self.sample_rate)

    @property
    def chunk_stride(self) -> int | None:
        if self.chunk_length is None or self.overlap is None:
            return self.chunk_length
        return max(1, int((1.0 - self.overlap) * self.chunk_length))

    @property
    def streamable(self) -> bool:
        """True when chunked streaming gives exactly the offline result."""
        return (self.causal and self.pad_mode == "constant" and self.norm != "time_group_norm"
                and self.trim_right_ratio == 1.0 and not self.normalize and self.chunk_length is None)

    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"codec config: {msg}")

        if self.sample_rate <= 0 or self.channels not in (1, 2):
            raise bad(f"sample_rate must be > 0 and channels 1 or 2 (got {self.sample_rate}, {self.channels})")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise bad(f"ratios must be positive integers, got {self.ratios}")
        if self.bins < 2 or 2 ** self.bits_per_codebook != self.bins:
            raise bad(f"bins must be a power of two, got {self.bins}")
        if self.pad_mode not in ("constant", "reflect", "replicate"):
            raise bad(f"pad_mode must be constant/reflect/replicate, got {self.pad_mode!r}")
        if self.norm not in ("weight_norm", "time_group_norm", "none"):
            raise bad(f"norm must be weight_norm/time_group_norm/none, got {self.norm!r}")
        if not self.target_bandwidths or min(self.target_bandwidths) <= 0:
            raise bad(f"target_bandwidths must be positive, got {self.target_bandwidths}")
        if not 0.0 <= self.trim_right_ratio <= 1.0 or (not self.causal and self.trim_right_ratio != 1.0):
            raise bad("trim_right_ratio must be in [0, 1] and 1.0 for non-causal models")
        # sane sizes, checked before any layer is built (a corrupt config must not allocate terabytes)
        for key, (lo, hi) in _SIZE_LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise bad(f"{key} must be an integer in {lo}..{hi}, got {value!r}")
        if len(self.ratios) > 8 or any(r > 64 for r in self.ratios) or self.hop_length > 1 << 20:
            raise bad(f"ratios must be at most 8 values of 1..64 (hop <= 1048576), got {self.ratios}")
        if self.n_filters * 2 ** len(self.ratios) > 1 << 16:
            raise bad(f"n_filters * 2^len(ratios) = {self.n_filters * 2 ** len(self.ratios)} channels is too many "
                      "(at most 65536)")
        if not all(math.isfinite(b) for b in self.target_bandwidths) or self.n_q > 1024:
            raise bad(f"target_bandwidths must be finite and need at most 1024 codebooks, got {self.target_bandwidths}")
        for key in ("ema_decay", "dead_code_threshold"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0) or (key == "ema_decay" and value > 1):
                raise bad(f"{key} must be a finite number >= 0{' and <= 1' if key == 'ema_decay' else ''}, got {value}")
        if self.chunk_length_s is not None and not (math.isfinite(self.chunk_length_s) and self.chunk_length_s > 0):
            raise bad(f"chunk_length_s must be a positive number of seconds or null, got {self.chunk_length_s}")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise bad(f"overlap must be in [0, 1) or null, got {self.overlap}")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The fused weights' shapes of a codec of this config, built on the meta device (no memory)."""
        import torch

        from codeclm.codec.model import Codec

        with torch.device("meta"):
            model = Codec(self)
        return {k: tuple(v.shape) for k, v in model.state_dict_fused().items()}

    def optional_weights(self) -> tuple[str, ...]:
        return EMA_STATS  # inference-only folders leave out the EMA statistics

