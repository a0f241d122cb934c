"""The codec interface every compression model implements, and ``load_model(folder)``.

A codec turns audio ``[B, C, T]`` into integer codes ``[B, n_q, F]`` (``F = ceil(T / hop)``) and
back into audio ``[B, C, F * hop]``. Everything above the codec (the compressor, token caches,
the LM pipelines, evaluation) talks to this interface only, like AudioCraft's and Moshi's
``CompressionModel``:

=========================  =====================================================================
``sample_rate``, ``channels``   audio the model takes and gives
``hop_length``, ``frame_rate``  samples per code frame, frames per second
``num_codebooks`` (``n_q``)     codebooks of the full bitrate; ``cardinality``: entries per codebook
``num_codebooks_for(kbps)``     codebooks used at a bandwidth (None: all); ``bandwidth_of(n_q)``
``encode(wav, bandwidth)``      -> LongTensor ``[B, n_q, F]``; ``decode(codes)`` -> ``[B, C, F*hop]``
``streamable``, ``streaming()`` exact chunk-in/chunk-out streaming, where the model allows it
``identity()``                  name + weight hash (recorded in ``.cclm`` files)
``save_pretrained``/``from_pretrained``   ``config.json`` + ``model.safetensors``
=========================  =====================================================================

Adding a codec is one module defining a :class:`CompressionModel` subclass with a
``model_type`` and a ``config_class`` plus one line in :data:`MODELS`; :func:`load_model` then opens its folders.
``transformers`` folders (``model_type`` ``encodec`` or ``dac``) open through the converters
in :data:`HF_CONVERTERS`. The registries hold module paths as strings (like
``codeclm.training.config.TASKS``), so this module imports no codec and there are no cycles.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import ClassVar, Self

import torch

from codeclm.errors import AudioError, CodesError, ConfigError
from codeclm.pretrained import (CONFIG_NAME, default_checkpoint, fused_state_dict, load_folder, read_config,
                                save_folder, weights_hash)
from codeclm.streaming import StreamingError, StreamingModule

__all__ = ["CompressionModel", "MODELS", "HF_CONVERTERS", "load_model", "from_hf", "model_class"]

# config.json "model_type" -> "module:Class" of a CompressionModel with from_pretrained(folder)
MODELS = {
    "codeclm-codec": "codeclm.codec.model:Codec",
    "codeclm-dac": "codeclm.codec.dac:DacCodec",
    "codeclm-frame-codec": "codeclm.codec.frame:FrameCodec",
}
# transformers model_type -> "module:function" converting a transformers model (object or folder)
HF_CONVERTERS = {
    "encodec": "codeclm.codec.hf:codec_from_hf",
    "dac": "codeclm.codec.dac_hf:dac_from_hf",
}
DEFAULT_CODEC = "codec"


def _resolve(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def model_class(model_type: str) -> type[CompressionModel]:
    """The codec class registered for ``model_type`` (imported on first use)."""
    if model_type not in MODELS:
        raise ConfigError(f"unknown codec model_type {model_type!r}; known: {sorted(MODELS)}")
    return _resolve(MODELS[model_type])


def load_model(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> CompressionModel:
    """Open a codec folder whatever its kind (``config.json``'s ``model_type`` picks the class).

    None opens the shipped default (``checkpoints/codec``). A ``transformers`` EnCodec or DAC
    folder (``model_type`` ``encodec`` / ``dac``) is converted on the fly, like ``from_hf``.
    """
    folder = Path(folder) if folder is not None else default_checkpoint(DEFAULT_CODEC)
    config = read_config(folder)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in HF_CONVERTERS:
        return _resolve(HF_CONVERTERS[model_type])(folder).to(device).eval()
    if model_type not in MODELS:
        raise ConfigError(f"{folder / CONFIG_NAME}: model_type {model_type!r} is not a codec; known: "
                          f"{sorted(MODELS) + sorted(HF_CONVERTERS)}")
    return model_class(model_type).from_pretrained(folder, device=device)


def hf_model_type(model_or_folder) -> str | None:
    if isinstance(model_or_folder, (str, os.PathLike)):
        config = read_config(model_or_folder)
        return config.get("model_type") if isinstance(config, dict) else None
    return getattr(getattr(model_or_folder, "config", None), "model_type", None)


def from_hf(model_or_folder) -> CompressionModel:
    """Convert a ``transformers`` codec (EncodecModel, DacModel; object or saved folder)."""
    model_type = hf_model_type(model_or_folder)
    if model_type not in HF_CONVERTERS:
        raise ConfigError(f"{model_or_folder if isinstance(model_or_folder, (str, os.PathLike)) else type(model_or_folder).__name__}"
                          f": model_type {model_type!r} has no codeclm import; known: {sorted(HF_CONVERTERS)}")
    return _resolve(HF_CONVERTERS[model_type])(model_or_folder)


EMA_STATS = (".embed_avg", ".cluster_size")  # codebook training statistics: left out of inference-only folders


def _rebuild_ema_stats(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Inference-only folders leave out the EMA codebooks' training statistics: rebuild each
    missing ``<codebook>.embed_avg`` from the codebook ``<codebook>.embed`` and its
    ``cluster_size`` as ones, in place (models without EMA codebooks are left as they are)."""
    for key in model.state_dict():
        if key.endswith(EMA_STATS[0]) and key not in weights:
            prefix = key[: -len(EMA_STATS[0])]
            embed = weights.get(prefix + ".embed")
            if embed is not None:
                weights[key] = embed.clone()
                weights[prefix + EMA_STATS[1]] = torch.ones(embed.shape[0])


class CompressionModel(StreamingModule):
    """Base class of codecs: the shared interface, input checks, bitrate arithmetic and folders.

    Subclasses set ``model_type``, ``config_class`` (the :class:`~codeclm.pretrained.SavedConfig`
    that ``cls(config)`` takes, held as ``self.config``) and ``dtype_tensor``, and implement
    ``encode`` and ``decode``. The audio and codebook properties default to the config's fields
    (``sample_rate``, ``channels``, ``hop_length``, ``n_q``, ``bins``) and may be overridden;
    ``save_pretrained``/``from_pretrained`` serve every codec. Override ``streamable`` (and the
    streaming hooks) when they stream.
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    shipped_default: ClassVar[str | None] = None  # the checkpoints/ folder from_pretrained() opens
    dtype_tensor: ClassVar[str]  # the weight whose dtype inputs are cast to (``encoder.conv.weight`` ...)
    config: object

    # -- from the config (override where the model differs) --------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.config.n_q

    @property
    def cardinality(self) -> int:
        return self.config.bins

    @property
    def _dtype(self) -> torch.dtype:
        """The weights' dtype (that of ``dtype_tensor``): what ``encode``/``decode`` compute in."""
        owner, _, name = self.dtype_tensor.rpartition(".")
        return getattr(self.get_submodule(owner), name).dtype

    # -- what a subclass provides ---------------------------------------------------------------
    def encode(self, wav: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- folders --------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None,
                        inference_only: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (fp16 with ``dtype=torch.float16``).

        ``inference_only`` leaves out the codebooks' EMA training statistics (``embed_avg``,
        ``cluster_size``; half an EMA quantizer's size, nothing for other codecs); loading
        rebuilds them from the codebooks.
        """
        state = fused_state_dict(self)
        if inference_only:
            state = {k: v for k, v in state.items() if not k.endswith(EMA_STATS)}
        return save_folder(folder, self.config.to_dict(), state, dtype)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Self:
        """Load a folder of this class (``config.json`` + ``model.safetensors``, inference-only ones
        too), in eval mode on ``device``; no folder opens the shipped default (``checkpoints/codec``)
        of classes that have one."""
        if folder is None:
            if cls.shipped_default is None:
                raise ConfigError(f"{cls.__name__} has no shipped default: pass a model folder")
            folder = default_checkpoint(cls.shipped_default)
        return load_folder(cls, cls.config_class, folder, prepare=_rebuild_ema_stats).to(device).eval()

    # -- derived --------------------------------------------------------------------------------
    @property
    def n_q(self) -> int:
        return self.num_codebooks

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_codebook(self) -> int:
        return int(math.log2(self.cardinality))

    @property
    def name(self) -> str:
        return getattr(self.config, "name", self.model_type)

    @property
    def target_bandwidths(self) -> list[float]:
        """Bandwidths (kbps) worth offering: each whole number of codebooks by default."""
        return [self.bandwidth_of(n) for n in range(1, self.num_codebooks + 1)]

    @property
    def streamable(self) -> bool:
        return False

    @property
    def latency(self) -> float | None:
        """Algorithmic latency in seconds when streaming (None: the model does not stream)."""
        return None

    def num_codebooks_for(self, bandwidth: float | None) -> int:
        """Codebooks that fit in ``bandwidth`` kbps (None: all); the inverse of :meth:`bandwidth_of`."""
        if bandwidth is None:
            return self.num_codebooks
        if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
            raise CodesError(f"bandwidth must be a positive number of kbps, got {bandwidth!r}")
        n_q = max(1, math.floor(bandwidth * 1000 / (self.frame_rate * self.bits_per_codebook) + 1e-9))
        if n_q > self.num_codebooks:
            raise CodesError(f"bandwidth {bandwidth} kbps needs {n_q} codebooks but the model has "
                             f"{self.num_codebooks} (max {self.bandwidth_of(self.num_codebooks):.3g} kbps)")
        return n_q

    def bandwidth_of(self, n_q: int) -> float:
        """Bitrate in kbps of ``n_q`` raw (not entropy-coded) codebooks."""
        return n_q * self.frame_rate * self.bits_per_codebook / 1000

    def identity(self) -> dict:
        """Name and weight hash: what a compressed file records to refuse a different model."""
        return {"name": self.name, "sha256": weights_hash(fused_state_dict(self))}

    # -- streaming: refused unless a subclass supports it ------------------------------------------
    def flush_decoder(self) -> torch.Tensor:
        """End of a decoding stream: audio the decoder still holds ``[B, C, n]``. Codecs whose
        decoder looks ahead (a frame's audio needs later frames) hold some back; a decode-only
        stream calls this once at its end (after the encoder's ``flush()`` the last ``decode``
        already emitted it). Empty for codecs that hold nothing back."""
        if not self.is_streaming:
            raise StreamingError("flush_decoder() is only meaningful inside a streaming() block")
        return torch.zeros(self._streaming_batch_size, self.channels, 0)

    def _whole_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """Streaming encoders: the chunk ``wav`` joined to the samples held back from the last call,
        cut to whole frames (possibly none); the remainder is kept in ``state["buffer"]``. The
        stream state needs ``buffer`` and ``encoder_done`` (set by the subclass' ``flush()``)."""
        self._check_stream_batch(wav.shape[0])
        state = self._streaming_state
        if state["encoder_done"]:
            raise StreamingError("encode() after flush(): the stream has ended (reset_streaming() starts a new one)")
        buf = wav if state["buffer"] is None else torch.cat([state["buffer"], wav], -1)
        usable = buf.shape[-1] - buf.shape[-1] % self.hop_length
        state["buffer"] = buf[..., usable:]
        return buf[..., :usable]

    def _init_streaming_state(self, batch_size: int):
        raise StreamingError(f"{type(self).__name__} cannot stream exactly; encode/decode whole signals")

    # -- shared input checks --------------------------------------------------------------------
    def check_wav(self, wav: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor):
            raise AudioError(f"encode expects a torch.Tensor [batch, channels, samples], got {type(wav).__name__}")
        if wav.dim() != 3:
            raise AudioError(f"encode expects audio shaped [batch, channels, samples], got {tuple(wav.shape)}")
        if not wav.is_floating_point():
            raise AudioError(f"encode expects floating-point audio, got {wav.dtype}")
        if wav.shape[1] != self.channels:
            raise AudioError(f"this codec takes {self.channels}-channel audio, got {wav.shape[1]} channels")
        if not self.is_streaming and wav.shape[-1] == 0:  # a stream may be fed an empty chunk
            raise AudioError("cannot encode empty audio (0 samples)")
        if not torch.isfinite(wav).all():
            raise AudioError("audio contains NaN or infinite samples")
        return wav.to(dtype)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise CodesError(f"decode expects codes shaped [batch, n_q, frames], got {shape}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise CodesError(f"codes must be an integer tensor, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.num_codebooks:
            raise CodesError(f"codes have {codes.shape[1]} codebooks; this codec has 1..{self.num_codebooks}")
        # any integer dtype (uint8, int16 ...): compare as int64, never in the codes' own dtype, where
        # the bound itself would wrap (1024 is 0 in uint8)
        codes = codes.long()
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.cardinality:
                raise CodesError(f"codes out of range: values must be in [0, {self.cardinality - 1}], "
                                 f"got [{lo}, {hi}]")
        return codes
