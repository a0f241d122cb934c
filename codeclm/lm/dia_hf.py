"""Import ``transformers``' ``DiaForConditionalGeneration`` (an object or a saved folder) as a
:class:`codeclm.lm.dia.DiaModel` (one way: codeclm folders are not transformers folders).

Weights map one to one; q/k/v projections are concatenated into one (fused) projection. The
generation defaults a folder carries (``generation_config.json``: guidance scale, temperature,
top-k, top-p) are returned too, so the pipeline samples as the model's authors configured.
"""

from __future__ import annotations

import os

import torch

from codeclm.errors import ConfigError
from codeclm.lm.dia import DiaConfig, DiaModel
from codeclm.pretrained import load_transformers_model, load_weights_into

__all__ = ["dia_config_from_hf", "dia_from_hf", "generation_defaults_from_hf", "load_hf_dia"]


def _rope_theta(cfg, what: str) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ConfigError(f"Dia import: {what} RoPE type {kind!r} is not supported (only 'default')")
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10_000.0)))


def dia_config_from_hf(hf_config) -> DiaConfig:
    """The :class:`DiaConfig` of a ``transformers.DiaConfig``."""
    if getattr(hf_config, "model_type", None) != "dia":
        raise ConfigError(f"expected a Dia config, got model_type={getattr(hf_config, 'model_type', None)!r}")
    enc, dec = hf_config.encoder_config, hf_config.decoder_config
    if enc.hidden_act != dec.hidden_act:
        raise ConfigError(f"Dia import: encoder and decoder activations differ ({enc.hidden_act}, {dec.hidden_act})")
    return DiaConfig(
        text_vocab_size=enc.vocab_size, enc_dim=enc.hidden_size, enc_layers=enc.num_hidden_layers,
        enc_heads=enc.num_attention_heads, enc_kv_heads=enc.num_key_value_heads or enc.num_attention_heads,
        enc_head_dim=enc.head_dim, enc_ffn_dim=enc.intermediate_size, enc_max_len=enc.max_position_embeddings,
        enc_rope_theta=_rope_theta(enc, "encoder"), enc_norm_eps=enc.norm_eps,
        dim=dec.hidden_size, num_layers=dec.num_hidden_layers, num_heads=dec.num_attention_heads,
        num_kv_heads=dec.num_key_value_heads or dec.num_attention_heads, head_dim=dec.head_dim,
        ffn_dim=dec.intermediate_size, cross_heads=dec.cross_num_attention_heads,
        cross_kv_heads=dec.cross_num_key_value_heads, cross_head_dim=dec.cross_head_dim,
        max_seq_len=dec.max_position_embeddings, rope_theta=_rope_theta(dec, "decoder"), norm_eps=dec.norm_eps,
        activation=dec.hidden_act, n_q=dec.num_channels, vocab_size=dec.vocab_size, eos_id=dec.eos_token_id,
        pad_id=dec.pad_token_id, bos_id=dec.bos_token_id, delays=list(hf_config.delay_pattern),
    )


def _weights(theirs: dict[str, torch.Tensor], config: DiaConfig) -> dict[str, torch.Tensor]:
    def get(key: str) -> torch.Tensor:
        if key not in theirs:
            raise ConfigError(f"Dia import: weight {key!r} missing from the transformers model")
        return theirs[key].detach().to(torch.float32)

    def attn(src: str, dst: str, w: dict) -> None:
        w[dst + "qkv.weight"] = torch.cat([get(f"{src}{p}_proj.weight") for p in "qkv"], 0)
        w[dst + "out.weight"] = get(src + "o_proj.weight")

    w: dict[str, torch.Tensor] = {"encoder.embed.weight": get("model.encoder.embedding.weight"),
                                  "encoder.norm.weight": get("model.encoder.norm.weight")}
    for i in range(config.enc_layers):
        src, dst = f"model.encoder.layers.{i}.", f"encoder.layers.{i}."
        w[dst + "norm_attn.weight"] = get(src + "pre_sa_norm.weight")
        attn(src + "self_attention.", dst + "attn.", w)
        w[dst + "norm_ffn.weight"] = get(src + "post_sa_norm.weight")
        w[dst + "ffn.gate_up.weight"] = get(src + "mlp.gate_up_proj.weight")
        w[dst + "ffn.down.weight"] = get(src + "mlp.down_proj.weight")
    w["decoder.embed.weight"] = get("model.decoder.embeddings.embed.weight")
    w["decoder.norm.weight"] = get("model.decoder.norm.weight")
    w["decoder.head.weight"] = get("logits_dense.weight")
    for i in range(config.num_layers):
        src, dst = f"model.decoder.layers.{i}.", f"decoder.layers.{i}."
        w[dst + "norm_attn.weight"] = get(src + "pre_sa_norm.weight")
        attn(src + "self_attention.", dst + "attn.", w)
        w[dst + "norm_cross.weight"] = get(src + "pre_ca_norm.weight")
        ca = src + "cross_attention."
        w[dst + "cross.q.weight"] = get(ca + "q_proj.weight")
        w[dst + "cross.kv.weight"] = torch.cat([get(ca + "k_proj.weight"), get(ca + "v_proj.weight")], 0)
        w[dst + "cross.out.weight"] = get(ca + "o_proj.weight")
        w[dst + "norm_ffn.weight"] = get(src + "pre_mlp_norm.weight")
        w[dst + "ffn.gate_up.weight"] = get(src + "mlp.gate_up_proj.weight")
        w[dst + "ffn.down.weight"] = get(src + "mlp.down_proj.weight")
    return w


def load_hf_dia(model_or_folder):
    """A ``DiaForConditionalGeneration`` as given, or loaded from a saved folder (eval mode)."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        from pathlib import Path

        folder = Path(model_or_folder)
        if (folder / "config.json").is_file() and not any(folder.glob("*.safetensors")):
            raise ConfigError(f"{folder}: no .safetensors weights (a transformers-format Dia folder such as "
                              "nari-labs/Dia-1.6B-0626 is needed; pickled .pth checkpoints are not loaded)")
    model = load_transformers_model(model_or_folder, "DiaForConditionalGeneration", "Dia")
    if getattr(getattr(model, "config", None), "model_type", None) != "dia":
        raise ConfigError(f"expected a transformers Dia model, got {type(model).__name__}")
    return model.eval()


def generation_defaults_from_hf(model) -> dict:
    """Sampling defaults from the model's ``generation_config`` (only the values it sets)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return {}
    out = {}
    diff = gc.to_diff_dict() if hasattr(gc, "to_diff_dict") else {}
    for key in ("guidance_scale", "temperature", "top_k", "top_p", "do_sample"):
        if key in diff and diff[key] is not None:
            out[key] = diff[key]
    return out


def dia_from_hf(model_or_folder) -> DiaModel:
    """The converted :class:`DiaModel` (eval mode, float32)."""
    model = load_hf_dia(model_or_folder)
    config = dia_config_from_hf(model.config)
    ours = DiaModel(config)
    load_weights_into(ours, _weights(model.state_dict(), config), "transformers Dia")
    return ours.eval()
