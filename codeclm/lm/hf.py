"""Import Hugging Face ``transformers`` MusicGen (``MusicgenForConditionalGeneration``).

The decoder maps one to one onto :class:`TokenLM` (sinusoidal positions added at the input,
pre-norm blocks with bias-free attention and GELU feed-forward, a final LayerNorm, K summed
embeddings of ``card + 1`` rows, K bias-free heads); ``enc_to_dec_proj`` becomes the LM's
``cond_proj``. The T5 text encoder becomes a :class:`T5Conditioner` and the EnCodec audio
encoder a :class:`codeclm.codec.Codec` (``Codec.from_hf``).

MusicGen masks the projected text states (``states * attention_mask``) and uses zeroed states
with a zero mask as the CFG null condition; :class:`TokenLM` zeroes masked conditioning
positions after its projection the same way, so logits and greedy generations match.
Stereo MusicGen (interleaved left/right codebooks) is not supported.
"""

from __future__ import annotations

import os

import torch

from codeclm.errors import ConfigError
from codeclm.lm.conditioners import T5Conditioner
from codeclm.lm.config import LMConfig
from codeclm.lm.transformer import TokenLM
from codeclm.pretrained import load_transformers_model, load_weights_into

__all__ = ["conditioner_from_hf", "lm_config_from_hf", "lm_from_hf", "load_hf_musicgen", "musicgen_from_hf"]

_DEC = "decoder.model.decoder."


def lm_config_from_hf(hf_config) -> LMConfig:
    """The :class:`LMConfig` of a ``transformers.MusicgenConfig``'s decoder."""
    if getattr(hf_config, "model_type", None) != "musicgen":
        raise ConfigError(f"expected a MusicGen config, got model_type={getattr(hf_config, 'model_type', None)!r}")
    dec, text = hf_config.decoder, hf_config.text_encoder
    if getattr(dec, "audio_channels", 1) != 1:
        raise ConfigError("stereo MusicGen (audio_channels=2) is not supported yet")
    if dec.activation_function != "gelu":
        raise ConfigError(f"MusicGen import supports gelu only, got {dec.activation_function!r}")
    if getattr(dec, "scale_embedding", False):
        raise ConfigError("MusicGen import: scale_embedding=True is not supported")
    if getattr(dec, "cross_attention_hidden_size", None) is not None:
        raise ConfigError("MusicGen import: cross_attention_hidden_size is not supported")
    text_dim = int(text.hidden_size if hasattr(text, "hidden_size") else text.d_model)
    return LMConfig(
        n_q=dec.num_codebooks, card=dec.vocab_size, dim=dec.hidden_size, num_heads=dec.num_attention_heads,
        num_layers=dec.num_hidden_layers, ffn_dim=dec.ffn_dim, dropout=0.0, positional="sinusoidal",
        max_period=10_000.0, max_seq_len=dec.max_position_embeddings, cross_attention=True,
        cond_dim=None if text_dim == dec.hidden_size else text_dim, norm_first=True, norm_eps=1e-5,
        bias_attn=False, bias_ffn=False, bias_heads=False, pattern="delay",
    )


def _lm_weights(theirs: dict[str, torch.Tensor], config: LMConfig) -> dict[str, torch.Tensor]:
    def get(key: str) -> torch.Tensor:
        if key not in theirs:
            raise ConfigError(f"MusicGen import: weight {key!r} missing from the transformers model")
        return theirs[key].detach().to(torch.float32)

    w: dict[str, torch.Tensor] = {}
    for k in range(config.n_q):
        w[f"emb.{k}.weight"] = get(f"{_DEC}embed_tokens.{k}.weight")
        w[f"heads.{k}.weight"] = get(f"decoder.lm_heads.{k}.weight")
    for i in range(config.num_layers):
        src, dst = f"{_DEC}layers.{i}.", f"layers.{i}."
        w[dst + "attn.qkv.weight"] = torch.cat([get(src + f"self_attn.{p}_proj.weight") for p in "qkv"], 0)
        w[dst + "attn.out.weight"] = get(src + "self_attn.out_proj.weight")
        w[dst + "cross.q.weight"] = get(src + "encoder_attn.q_proj.weight")
        w[dst + "cross.kv.weight"] = torch.cat([get(src + f"encoder_attn.{p}_proj.weight") for p in "kv"], 0)
        w[dst + "cross.out.weight"] = get(src + "encoder_attn.out_proj.weight")
        for ours, hf in (("norm_attn", "self_attn_layer_norm"), ("norm_cross", "encoder_attn_layer_norm"),
                         ("norm_ffn", "final_layer_norm")):
            w[f"{dst}{ours}.weight"] = get(f"{src}{hf}.weight")
            w[f"{dst}{ours}.bias"] = get(f"{src}{hf}.bias")
        w[dst + "ffn.0.weight"] = get(src + "fc1.weight")
        w[dst + "ffn.2.weight"] = get(src + "fc2.weight")
    w["out_norm.weight"] = get(f"{_DEC}layer_norm.weight")
    w["out_norm.bias"] = get(f"{_DEC}layer_norm.bias")
    if config.cond_dim is not None:
        w["cond_proj.weight"] = get("enc_to_dec_proj.weight")
        w["cond_proj.bias"] = get("enc_to_dec_proj.bias")
    return w


def lm_from_hf(model) -> TokenLM:
    """The MusicGen decoder (+ ``enc_to_dec_proj``) as a :class:`TokenLM` (eval mode, float32)."""
    config = lm_config_from_hf(model.config)
    lm = TokenLM(config)
    load_weights_into(lm, _lm_weights(model.state_dict(), config), "transformers MusicGen")
    return lm.eval()


def conditioner_from_hf(model, tokenizer) -> T5Conditioner:
    """MusicGen's T5 text encoder (a copy) and tokenizer as a :class:`T5Conditioner`."""
    from transformers import T5EncoderModel

    text = model.text_encoder
    encoder = T5EncoderModel(text.config)
    encoder.load_state_dict(text.state_dict(), strict=False)
    missing = set(encoder.state_dict()) - set(text.state_dict())
    if missing:
        raise ConfigError(f"MusicGen import: text encoder weights missing {sorted(missing)[:3]}")
    return T5Conditioner(encoder.float().eval(), tokenizer)


def load_hf_musicgen(model_or_folder, tokenizer=None):
    """``(MusicgenForConditionalGeneration, tokenizer)`` from an object or a saved folder."""
    model = load_transformers_model(model_or_folder, "MusicgenForConditionalGeneration", "MusicGen")
    if isinstance(model_or_folder, (str, os.PathLike)) and tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_or_folder))
        except Exception as exc:
            raise ConfigError(f"{model_or_folder}: no tokenizer found, pass tokenizer= ({exc})") from None
    if tokenizer is None:
        raise ConfigError("MusicGen import: pass the text tokenizer (tokenizer=...)")
    if getattr(model.config, "model_type", None) != "musicgen":
        raise ConfigError(f"expected a MusicGen model, got {type(model).__name__}")
    return model.eval(), tokenizer


def musicgen_from_hf(model_or_folder, tokenizer=None):
    """``(lm, codec, conditioner)`` converted from a transformers MusicGen."""
    from codeclm.codec import Codec

    model, tokenizer = load_hf_musicgen(model_or_folder, tokenizer)
    lm = lm_from_hf(model)
    codec = Codec.from_hf(model.audio_encoder)
    if codec.num_codebooks < lm.config.n_q:
        raise ConfigError(f"MusicGen import: the codec has {codec.num_codebooks} codebooks, the LM {lm.config.n_q}")
    return lm, codec, conditioner_from_hf(model, tokenizer)
