"""Dia: a tiny random transformers DiaForConditionalGeneration converted to codeclm gives the same
logits, the same greedy generations (with and without an audio prompt, with and without CFG, with
early and forced EOS) and, through the DAC codec, the same audio; folders, CLI and input errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    DacConfig,
    DacModel,
    DiaConfig,
    DiaDecoderConfig,
    DiaEncoderConfig,
    DiaFeatureExtractor,
    DiaForConditionalGeneration,
    DiaProcessor,
    DiaTokenizer,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from codeclm.cli import main  # noqa: E402
from codeclm.errors import AudioError, CodecLMError, CodesError, ConfigError  # noqa: E402
from codeclm.lm.dia import DiaModel, encode_text  # noqa: E402
from codeclm.lm.dia_hf import dia_from_hf  # noqa: E402
from codeclm.pipelines import VoiceClone  # noqa: E402
from codeclm.pipelines.dia import DiaVoiceClone  # noqa: E402
from codeclm.tokenizers.normalize import TextError  # noqa: E402

hf_logging.set_verbosity_error()
SR, HOP, EOS = 44100, 8, 1024
TEXTS = ["[S1] Hello there. [S2] Hi, how are you?", "[S1] Fine."]
REF_TEXT = "[S1] This is the reference voice."
N = 40  # max_new_tokens: 24 frames at most with Dia's delays (max 15)


def tiny_dia(seed: int = 0, eos_boost: float = 1.0) -> DiaForConditionalGeneration:
    torch.manual_seed(seed)
    enc = DiaEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=8, intermediate_size=64, max_position_embeddings=128)
    dec = DiaDecoderConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, cross_num_attention_heads=4, cross_head_dim=16, cross_num_key_value_heads=2,
                           cross_hidden_size=32, intermediate_size=96, max_position_embeddings=256)
    model = DiaForConditionalGeneration(DiaConfig(encoder_config=enc.to_dict(), decoder_config=dec.to_dict())).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # larger than the 0.02 init: confident, tie-free argmaxes
            if p.dim() == 2:
                p.normal_(0, 0.3)
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        model.logits_dense.weight[EOS] *= eos_boost  # codebook 0's EOS row
    return model


def tiny_dac(seed: int = 0) -> DacModel:
    torch.manual_seed(seed)
    cfg = DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 4], decoder_hidden_size=16, n_codebooks=9,
                    codebook_size=1024, codebook_dim=4, sampling_rate=SR)
    model = DacModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
    return model


def reference_wav(n: int = 100, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    return (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(n, generator=g)).float()


@pytest.fixture(scope="module")
def hf():
    model, dac = tiny_dia(), tiny_dac()
    proc = DiaProcessor(DiaFeatureExtractor(sampling_rate=SR, hop_length=HOP), DiaTokenizer(), dac)
    return model, dac, proc


@pytest.fixture(scope="module")
def pipe(hf):
    model, dac, _ = hf
    return VoiceClone.from_hf(model, audio_tokenizer=dac)


def hf_generate(model, proc, texts, ref=None, guidance_scale=3.0, max_new_tokens=N):
    """transformers' greedy generation: (delayed steps [B, K, L], the codes its processor decodes
    [per row: K, frames], the audio it decodes)."""
    full = texts if ref is None else [f"{REF_TEXT} {t}" for t in texts]
    kw = {} if ref is None else dict(audio=[ref.numpy()] * len(texts), sampling_rate=SR)
    inputs = proc(text=full, return_tensors="pt", **kw)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, guidance_scale=guidance_scale)
    prompt_len = None if ref is None else proc.get_audio_prompt_len(inputs["decoder_attention_mask"])
    captured = []
    decode = proc.audio_tokenizer.decode

    def spy(audio_codes, **kwargs):
        captured.append(audio_codes[0].clone())
        return decode(audio_codes=audio_codes, **kwargs)

    proc.audio_tokenizer.decode = spy
    try:
        audios = proc.batch_decode(out, audio_prompt_len=prompt_len)
    finally:
        del proc.audio_tokenizer.decode
    return out.transpose(1, 2).long(), captured, audios


def test_byte_tokens_match_dia_tokenizer():
    tok = DiaTokenizer()
    for text in ["[S1] Hello [S2] yo", "[S1]x[S2]", "é ü (laughs) <pad> [S3]", "  [S1]  spaced "]:
        assert encode_text(text) == tok(text).input_ids


def test_logits_match_transformers(hf):
    model, _, proc = hf
    ours = dia_from_hf(model)
    inputs = proc(text=TEXTS, return_tensors="pt")  # padded batch: the encoder mask matters
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1024, (2, 9, 12), generator=g)
    tokens[:, :, 0] = 1026
    with torch.no_grad():
        theirs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       decoder_input_ids=tokens.transpose(1, 2).contiguous()).logits  # [B * K, S, V]
        mine = ours(inputs["input_ids"], inputs["attention_mask"], tokens)  # [B, K, S, V]
    diff = (mine.reshape(theirs.shape) - theirs).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("guidance_scale", [3.0, None, 1.0])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_greedy_generation_matches_transformers(hf, pipe, guidance_scale, with_prompt):
    model, dac, proc = hf
    ref = reference_wav() if with_prompt else None
    steps, captured, _ = hf_generate(model, proc, TEXTS, ref, guidance_scale)
    prompt = None
    if with_prompt:  # the prompt given as codes: transformers' own DAC encoding of the padded reference
        with torch.no_grad():
            prompt = dac.encode(torch.nn.functional.pad(ref, (0, (-len(ref)) % HOP))[None, None]).audio_codes[0]
    codes = pipe.generate_tokens(TEXTS, prompt, REF_TEXT if with_prompt else None, max_new_tokens=N,
                                 do_sample=False, guidance_scale=guidance_scale)
    assert codes.dtype == torch.long and codes.shape[:2] == (2, 9)
    for b in range(2):
        n = pipe.last_lengths[b]
        assert torch.equal(codes[b, :, :n], captured[b]), b
    # the whole delayed sequence too (prompt, forced BOS lead-in, EOS and PAD tail)
    out = pipe.model.generate_steps(*pipe._text_ids(pipe._texts(TEXTS, REF_TEXT if with_prompt else None)), prompt,
                                    max_new_tokens=N, guidance_scale=guidance_scale)
    assert torch.equal(out.steps, steps)


def test_early_eos_matches_transformers():
    model = tiny_dia(seed=3, eos_boost=4.0)
    dac = tiny_dac()
    proc = DiaProcessor(DiaFeatureExtractor(sampling_rate=SR, hop_length=HOP), DiaTokenizer(), dac)
    steps, captured, _ = hf_generate(model, proc, TEXTS, None, 3.0, max_new_tokens=60)
    pipe = VoiceClone.from_hf(model, audio_tokenizer=dac)
    codes = pipe.generate_tokens(TEXTS, max_new_tokens=60, guidance_scale=3.0)
    lengths = pipe.last_lengths
    assert min(lengths) < 60 - 15 - 1, "EOS should come before the forced one in this configuration"
    assert lengths == [c.shape[-1] for c in captured]
    for b in range(2):
        assert torch.equal(codes[b, :, :lengths[b]], captured[b])
        assert bool((codes[b, :, lengths[b]:] == -1).all())


def test_decoded_audio_matches_transformers(hf, pipe):
    model, _, proc = hf
    ref = reference_wav()
    _, captured, audios = hf_generate(model, proc, TEXTS[:1], ref, 3.0)
    wav = pipe.generate(TEXTS[0], ref, REF_TEXT, temperature=0, guidance_scale=3.0, top_k=50, max_new_tokens=N)
    assert wav.shape == (1, captured[0].shape[-1] * HOP)
    assert (wav[0] - audios[0]).abs().max().item() < 1e-4
    # the reference encoded by codeclm's DAC is the prompt transformers' processor builds
    codes = pipe._prompt_codes(ref)
    with torch.no_grad():
        theirs = proc.audio_tokenizer.encode(torch.nn.functional.pad(ref, (0, 4))[None, None]).audio_codes[0]
    assert torch.equal(codes, theirs)


def test_sampling_is_deterministic_under_a_seed(pipe):
    kw = dict(max_new_tokens=30, do_sample=True, temperature=1.2, top_k=40, top_p=0.9)
    a = pipe.generate_tokens(TEXTS[0], seed=5, **kw)
    b = pipe.generate_tokens(TEXTS[0], seed=5, **kw)
    c = pipe.generate_tokens(TEXTS[0], seed=6, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 1024


def test_save_and_load_dispatch_to_dia(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "dia")
    info = json.loads((tmp_path / "dia" / "pipeline.json").read_text())
    assert info["type"] == "dia"
    loaded = VoiceClone.from_pretrained(tmp_path / "dia")
    assert isinstance(loaded, DiaVoiceClone)
    assert not any(p.suffix in (".pt", ".pth", ".bin") for p in (tmp_path / "dia").rglob("*"))
    kw = dict(max_new_tokens=30, guidance_scale=3.0)
    assert torch.equal(loaded.generate_tokens(TEXTS, **kw), pipe.generate_tokens(TEXTS, **kw))
    wav = reference_wav(400)
    a = loaded.generate(TEXTS[0], (wav, SR), REF_TEXT, seed=1, max_new_tokens=30)
    b = pipe.generate(TEXTS[0], (wav, SR), REF_TEXT, seed=1, max_new_tokens=30)
    assert torch.equal(a, b)


def test_from_hf_folder_finds_the_named_dac(hf, tmp_path):
    model, dac, _ = hf
    model.save_pretrained(tmp_path / "Dia-1.6B")
    dac.save_pretrained(tmp_path / "dac_44khz")
    (tmp_path / "Dia-1.6B" / "processor_config.json").write_text(json.dumps(
        {"audio_tokenizer": {"audio_tokenizer_class": "DacModel", "audio_tokenizer_name_or_path": "dac_44khz"}}))
    pipe = VoiceClone.from_hf(tmp_path / "Dia-1.6B")
    assert pipe.codec is not None and pipe.sample_rate == SR
    ref = DiaVoiceClone.from_hf(model, audio_tokenizer=tmp_path / "dac_44khz")
    kw = dict(max_new_tokens=30)
    assert torch.equal(pipe.generate_tokens(TEXTS[0], **kw), ref.generate_tokens(TEXTS[0], **kw))
    (tmp_path / "Dia-1.6B" / "processor_config.json").write_text(json.dumps(
        {"audio_tokenizer": {"audio_tokenizer_class": "DacModel", "audio_tokenizer_name_or_path": "descript/x"}}))
    with pytest.raises(ConfigError, match="not on this disk"):
        VoiceClone.from_hf(tmp_path / "Dia-1.6B")


def test_clone_cli_with_a_dia_folder(pipe, tmp_path, capsys):
    folder = pipe.save_pretrained(tmp_path / "dia")
    ref = tmp_path / "ref.wav"
    sf.write(ref, reference_wav(800).numpy(), SR)
    out = tmp_path / "out.wav"
    args = ["clone", "--model", str(folder), "--ref", str(ref), "--ref-text", REF_TEXT, "--text", TEXTS[0],
            "-o", str(out), "--seed", "3", "-q"]
    assert main(args) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == SR and audio.ndim == 1 and len(audio) > 0 and len(audio) % HOP == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pipe.generate(TEXTS[0], str(ref), REF_TEXT, seed=3)
    assert np.abs(audio - expected[0].numpy()).max() < 1e-4  # the same seeded generation (16-bit PCM steps are 3e-5)
    assert main(args) == 1  # exists: refused without --force
    assert "exists" in capsys.readouterr().err


def test_one_line_errors(pipe):
    codes = torch.zeros(9, 5, dtype=torch.long)
    with pytest.raises(TextError):
        pipe.generate_tokens("  ")
    with pytest.raises(TextError, match="ref_text"):
        pipe.generate_tokens(TEXTS[0], codes)
    with pytest.raises(CodecLMError, match="max_new_tokens"):
        pipe.generate_tokens(TEXTS[0], max_new_tokens=10)
    with pytest.raises(AudioError, match="codes"):
        pipe.generate_tokens(TEXTS[0], torch.zeros(4, 5, dtype=torch.long), REF_TEXT)
    with pytest.raises(CodesError):
        pipe.generate_tokens(TEXTS[0], codes + 2000, REF_TEXT)
    with pytest.raises(TextError, match="English"):
        pipe.generate(TEXTS[0], language="de")
    with pytest.raises(TextError, match="bytes"):
        pipe.generate_tokens("[S1] " + "a" * 200)
    for err in (TextError, CodecLMError, CodesError, AudioError):
        assert issubclass(err, Exception)


def test_untagged_text_gets_speaker_one(pipe):
    pipe.generate_tokens("hello", max_new_tokens=20)
    assert pipe.last_text == "[S1] hello"
    assert DiaModel is type(pipe.model)


def test_int8_option_decodes_with_int8_weights_close_to_float(hf, tmp_path, capsys):
    from codeclm.lm.quant import Int8Linear, int8_available

    if not int8_available():
        pytest.skip("this torch has no int8 weight-only matmul")
    model, dac, _ = hf
    calm = tiny_dia()  # the parity model's weights are wide on purpose, which makes it chaotic: a 1e-3
    with torch.no_grad():  # weight change moves its logits by tens of percent; this one is not
        for p in calm.parameters():
            if p.dim() == 2:
                p.mul_(0.3)
    fp32 = VoiceClone.from_hf(calm, audio_tokenizer=dac)
    q = VoiceClone.from_hf(calm, audio_tokenizer=dac).quantize_int8()
    linears = [m for m in q.model.modules() if isinstance(m, (Int8Linear, torch.nn.Linear))]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    ids = torch.tensor([encode_text(TEXTS[0])])
    steps = fp32.model.generate_steps(ids, max_new_tokens=30).steps
    with torch.no_grad():  # teacher-forced on the float sequence
        ref, got = fp32.model(ids, None, steps), q.model(ids, None, steps)
    assert float((got - ref).norm() / ref.norm()) < 0.03
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) > 0.9
    tokens = q.generate_tokens(TEXTS[0], max_new_tokens=30)
    assert tokens.dim() == 3 and int(tokens.min()) >= -1 and int(tokens.max()) < 1024
    with pytest.raises(ConfigError, match="int8"):
        q.save_pretrained(tmp_path / "q")
    folder = VoiceClone.from_hf(model, audio_tokenizer=dac).save_pretrained(tmp_path / "dia")
    ref_wav = tmp_path / "ref.wav"
    sf.write(ref_wav, reference_wav(800).numpy(), SR)
    out = tmp_path / "out.wav"
    assert main(["clone", "--model", str(folder), "--ref", str(ref_wav), "--ref-text", REF_TEXT, "--text", TEXTS[0],
                 "-o", str(out), "--seed", "3", "-q", "--int8"]) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == SR and len(audio) > 0 and len(audio) % HOP == 0
