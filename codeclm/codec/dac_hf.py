"""Import ``transformers``' ``DacModel`` (descript/dac_16khz, dac_24khz, dac_44khz) as a DacCodec.

One-way converter: it imports :mod:`codeclm.codec.dac`, nothing imports it except through the
registry in :mod:`codeclm.codec.base` (``Codec.from_hf``, ``load_model`` of a transformers folder).
Weight norm, if the model carries it (``apply_weight_norm``, either torch API), is folded.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from codeclm.codec.dac import DacCodec, DacConfig
from codeclm.errors import ConfigError
from codeclm.pretrained import convert_transformers_model, fused_state_dict

__all__ = ["config_from_hf", "dac_from_hf"]

_RULES = [  # ours -> transformers
    (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
    (r"^(encoder|decoder)\.conv_out\.", r"\1.conv2."),
    (r"^(encoder|decoder)\.snake\.", r"\1.snake1."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.res\.(\d+)\.", lambda m: f"{m[1]}.block.{m[2]}.res_unit{int(m[3]) + 1}."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.snake\.", r"\1.block.\2.snake1."),
    (r"^encoder\.blocks\.(\d+)\.conv\.", r"encoder.block.\1.conv1."),
    (r"^decoder\.blocks\.(\d+)\.conv\.", r"decoder.block.\1.conv_t1."),
    (r"^quantizer\.layers\.(\d+)\.", r"quantizer.quantizers.\1."),
]


def _hf_key(ours: str) -> str:
    for pattern, repl in _RULES:
        ours = re.sub(pattern, repl, ours)
    return ours


def config_from_hf(hf_config, name: str | None = None) -> DacConfig:
    """A :class:`DacConfig` equivalent to a ``transformers.DacConfig``."""
    if getattr(hf_config, "model_type", None) != "dac":
        raise ConfigError(f"expected a DAC config, got model_type={getattr(hf_config, 'model_type', None)!r}")
    source = getattr(hf_config, "_name_or_path", None)
    return DacConfig(
        name=name or (Path(str(source)).name if source else "") or "dac",
        sample_rate=int(hf_config.sampling_rate), encoder_dim=hf_config.encoder_hidden_size,
        ratios=list(hf_config.downsampling_ratios), decoder_dim=hf_config.decoder_hidden_size,
        n_q=hf_config.n_codebooks, bins=hf_config.codebook_size, codebook_dim=hf_config.codebook_dim)


def _plain_weights(model) -> dict[str, torch.Tensor]:
    """State dict with weight norm folded (torch.nn.utils.parametrizations or the legacy weight_g/v)."""
    state = fused_state_dict(model)
    for key in [k for k in state if k.endswith(".weight_v")]:
        owner = key[: -len(".weight_v")]
        v, g = state.pop(key), state.pop(owner + ".weight_g")
        state[owner + ".weight"] = torch._weight_norm(v, g, 0)
    return state


def dac_from_hf(model_or_folder, name: str | None = None) -> DacCodec:
    """Convert a ``DacModel`` (object, or a folder saved by ``save_pretrained``) to a DacCodec."""
    return convert_transformers_model(model_or_folder, "DacModel", "DAC",
                                      lambda hf_config: DacCodec(config_from_hf(hf_config, name)), _hf_key,
                                      weights=_plain_weights)
