"""A tiny random transformers MusicGen converted to codeclm gives the same logits and generations."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from codeclm.lm.generate import generate_codes
from codeclm.lm.hf import musicgen_from_hf

CARD, K = 64, 4
WORDS = ["drums", "synth", "pop", "rock", "calm", "piano", "fast", "slow", "guitar", "bass", "loud", "soft", "jazz"]
PROMPTS = ["calm piano", "loud rock guitar with fast drums"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_musicgen(seed: int = 0, text_dim: int = 32, dim: int = 48) -> MusicgenForConditionalGeneration:
    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=40, d_model=text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    enc = EncodecConfig(num_filters=8, hidden_size=32, upsampling_ratios=[4, 4, 2], codebook_size=CARD,
                        target_bandwidths=[18.0])  # 750 frames/s * 6 bits * 4 codebooks
    dec = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=dim, num_hidden_layers=2, num_attention_heads=2,
                                ffn_dim=2 * dim, num_codebooks=K, max_position_embeddings=256,
                                pad_token_id=CARD, bos_token_id=CARD, decoder_start_token_id=CARD)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(), decoder=dec.to_dict())
    model = MusicgenForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:  # zero-initialised by transformers
            layer.codebook.embed.normal_()
        for p in model.decoder.parameters():  # larger than the 0.02 init: confident, tie-free argmaxes
            if p.dim() == 2:
                p.normal_(0, 0.3)
        if hasattr(model, "enc_to_dec_proj"):
            model.enc_to_dec_proj.weight.normal_(0, 0.3)
            model.enc_to_dec_proj.bias.normal_(0, 0.3)
    gc = model.generation_config
    gc.pad_token_id = gc.bos_token_id = gc.decoder_start_token_id = CARD
    gc.do_sample = False
    return model


def hf_greedy_codes(model, tokenizer, prompts, steps, guidance_scale):
    """transformers' greedy generation, as codes [B, K, frames] (captured before audio decoding)."""
    captured = {}
    decode = model.audio_encoder.decode

    def spy(codes, *args, **kwargs):
        captured["codes"] = codes[0].clone()
        return decode(codes, *args, **kwargs)

    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    model.audio_encoder.decode = spy
    try:
        audio = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               do_sample=False, guidance_scale=guidance_scale, max_new_tokens=steps)
    finally:
        del model.audio_encoder.decode
    return captured["codes"], audio


@pytest.fixture(scope="module")
def converted():
    model, tok = tiny_musicgen(), tiny_tokenizer()
    lm, codec, cond = musicgen_from_hf(model, tok)
    return model, tok, lm, codec, cond


@pytest.mark.parametrize("with_proj", [True, False])
def test_teacher_forced_logits_match(with_proj):
    model, tok = tiny_musicgen(1, text_dim=32 if with_proj else 48), tiny_tokenizer()
    lm, _, cond = musicgen_from_hf(model, tok)
    assert (lm.cond_proj is not None) == with_proj
    inputs = tok(PROMPTS, padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, CARD + 1, (len(PROMPTS), K, 12), generator=g)
    with torch.no_grad():
        ref = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    decoder_input_ids=seq.reshape(-1, 12)).logits  # [B*K, S, card]
        emb, mask = cond(cond.tokenize(PROMPTS))
        ours = lm(seq, emb, mask)  # [B, K, S, card]
        assert torch.allclose(ours.reshape(-1, 12, CARD), ref, atol=1e-4), (ours.reshape(-1, 12, CARD) - ref).abs().max()
        # the KV-cached streaming path gives the same logits step by step
        with lm.streaming(len(PROMPTS)):
            steps = [lm(seq[:, :, :5], emb, mask)] + [lm(seq[:, :, s:s + 1]) for s in range(5, 12)]
        assert torch.allclose(torch.cat(steps, 2), ours, atol=1e-5)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_generation_matches_transformers(converted, guidance_scale):
    model, tok, lm, codec, cond = converted
    steps = 14
    ref_codes, ref_audio = hf_greedy_codes(model, tok, PROMPTS, steps, guidance_scale)
    emb, mask = cond.encode(PROMPTS)
    n_frames = steps - (K - 1)
    ours = generate_codes(lm, lm.config.get_pattern(), len(PROMPTS), n_frames, emb, mask,
                          guidance_scale=guidance_scale, do_sample=False)
    assert ours.shape == ref_codes.shape == (len(PROMPTS), K, n_frames)
    assert torch.equal(ours, ref_codes)
    audio = codec.decode(ours)
    assert audio.shape == ref_audio.shape
    assert torch.allclose(audio, ref_audio, atol=1e-4)


def test_generate_codes_prompt_and_frame_callback(converted):
    _, _, lm, _, cond = converted
    emb, mask = cond.encode(PROMPTS)
    pattern = lm.config.get_pattern()
    full = generate_codes(lm, pattern, 2, 9, emb, mask, guidance_scale=3.0, do_sample=False)
    chunks = []
    cont = generate_codes(lm, pattern, 2, 9, emb, mask, guidance_scale=3.0, do_sample=False,
                          prompt_codes=full[:, :, :4], on_frames=chunks.append)
    assert torch.equal(cont, full)  # greedy continuation of its own prefix
    assert torch.equal(torch.cat(chunks, 2), full) and len(chunks) > 2
