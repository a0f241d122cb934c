"""Import Hugging Face ``transformers`` EnCodec weights (24 kHz, 48 kHz, MusicGen's 32 kHz).

The SEANet layer lists match one to one, so the import folds weight norm and renames a few keys.
"""

from __future__ import annotations

import re

from codeclm.codec.config import CodecConfig
from codeclm.codec.model import Codec
from codeclm.errors import ConfigError
from codeclm.pretrained import convert_transformers_model


def config_from_hf(hf_config, name: str | None = None) -> CodecConfig:
    """A :class:`CodecConfig` equivalent to a ``transformers.EncodecConfig``."""
    if getattr(hf_config, "model_type", None) != "encodec":
        raise ConfigError(f"expected an EnCodec config, got model_type={getattr(hf_config, 'model_type', None)!r}")
    if hf_config.codebook_dim not in (None, hf_config.hidden_size):
        raise ConfigError("EnCodec models with codebook_dim != hidden_size are not supported")
    return CodecConfig(
        name=name or getattr(hf_config, "_name_or_path", None) or "encodec",
        sample_rate=hf_config.sampling_rate, channels=hf_config.audio_channels, dimension=hf_config.hidden_size,
        n_filters=hf_config.num_filters, n_residual_layers=hf_config.num_residual_layers,
        ratios=list(hf_config.upsampling_ratios), kernel_size=hf_config.kernel_size,
        last_kernel_size=hf_config.last_kernel_size, residual_kernel_size=hf_config.residual_kernel_size,
        dilation_base=hf_config.dilation_growth_rate, compress=hf_config.compress,
        lstm_layers=hf_config.num_lstm_layers, causal=hf_config.use_causal_conv, pad_mode=hf_config.pad_mode,
        norm=hf_config.norm_type, trim_right_ratio=hf_config.trim_right_ratio,
        conv_shortcut=hf_config.use_conv_shortcut, bins=hf_config.codebook_size,
        target_bandwidths=list(hf_config.target_bandwidths), normalize=hf_config.normalize,
        chunk_length_s=hf_config.chunk_length_s, overlap=hf_config.overlap, kmeans_init=False,
    )


def _hf_key(ours: str) -> str:
    key = ours.replace(".convtr.", ".conv.")
    return re.sub(r"^quantizer\.layers\.(\d+)\.", r"quantizer.layers.\1.codebook.", key)


def codec_from_hf(model_or_folder) -> Codec:
    """Convert an ``EncodecModel`` (object, or a folder saved by ``save_pretrained``) to a Codec."""
    return convert_transformers_model(model_or_folder, "EncodecModel", "EnCodec",
                                      lambda hf_config: Codec(config_from_hf(hf_config)), _hf_key)
