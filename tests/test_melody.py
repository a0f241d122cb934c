"""Melody conditioning: chromagram values, the token cache's chroma, the conditioner, the music
pipeline with a melody, and melody training end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from codeclm.data.manifest import AudioRecord
from codeclm.data.tokens import TokenCache, tokenize_corpus
from codeclm.errors import AudioError, CodecLMError
from codeclm.lm import LMConfig, TokenLM
from codeclm.lm.melody import SILENT, MelodyConditioner, chroma_indices
from codeclm.pipelines import TextToMusic

SR, HOP = 24000, 480


def tone(freqs, seconds=1.0, weights=None, sr=SR):
    t = torch.arange(int(seconds * sr)) / sr
    weights = weights or [1.0] * len(freqs)
    return sum(w * torch.sin(2 * math.pi * f * t) for f, w in zip(freqs, weights)) * 0.3


def midi_hz(m):
    return 440.0 * 2 ** ((m - 69) / 12)


def test_chroma_pitch_classes():
    # every pitch class from C4 (midi 60) up: the dominant class is the note's
    for m in range(60, 72):
        idx = chroma_indices(tone([midi_hz(m)]), SR, HOP)
        assert idx.shape == (1, 50)
        assert (idx[0, 1:-1] == m % 12).all(), (m, idx)
    # octave-invariant: A2 and A5 are both A
    assert (chroma_indices(tone([110.0]), SR, HOP)[0, 2:-2] == 9).all()
    assert (chroma_indices(tone([880.0]), SR, HOP)[0, 2:-2] == 9).all()
    # a chord: the loudest note wins
    chord = tone([midi_hz(64), midi_hz(67), midi_hz(72)], weights=[0.5, 0.5, 1.0])
    assert (chroma_indices(chord, SR, HOP)[0, 1:-1] == 0).all()


def test_chroma_silence_alignment_and_lengths():
    x = torch.cat([torch.zeros(SR // 2), tone([440.0], 0.5)])  # silence, then A from frame 25
    idx = chroma_indices(x, SR, HOP)[0]
    assert (idx[:15] == SILENT).all() and (idx[27:49] == 9).all()  # +-170 ms analysis window
    assert chroma_indices(torch.zeros(1000), SR, HOP).eq(SILENT).all()
    assert chroma_indices(tone([440.0], 0.1), SR, HOP).shape == (1, 5)  # ceil(2400 / 480)
    assert chroma_indices(tone([440.0], 0.101), SR, HOP).shape == (1, 6)
    padded = chroma_indices(tone([440.0], 0.2), SR, HOP, n_frames=15)
    assert padded.shape == (1, 15) and (padded[0, 10:] == SILENT).all()
    batch = torch.stack([tone([440.0])[None], tone([midi_hz(62)])[None]])  # [2, 1, N]
    assert chroma_indices(batch, SR, HOP)[:, 10].tolist() == [9, 2]
    with pytest.raises(CodecLMError):
        chroma_indices(torch.full((100,), float("nan")), SR, HOP)
    with pytest.raises(CodecLMError):
        chroma_indices(torch.zeros(100, dtype=torch.long), SR, HOP)


def test_melody_conditioner_masks_and_round_trip(tmp_path):
    torch.manual_seed(0)
    cond = MelodyConditioner(dim=16)
    idx = torch.tensor([[0, 9, 12, -1, -1]])
    emb, mask = cond(idx)
    assert emb.shape == (1, 5, 16) and mask.tolist() == [[True, True, True, False, False]]
    assert emb[0, 3:].abs().sum() == 0 and emb[0, :3].abs().sum() > 0
    cond.save_folder(tmp_path / "melody")
    again = MelodyConditioner.load(tmp_path / "melody")
    assert torch.equal(again(idx)[0], emb)


def test_token_cache_stores_chroma(tiny_codec, tmp_path):
    wavs = []
    for i, m in enumerate([60, 64, 67]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, tone([midi_hz(m)], 0.6).numpy(), SR)
        wavs.append(AudioRecord(path=str(path), duration=0.6, sample_rate=SR, channels=1, caption=f"note {m}"))
    tokenize_corpus(wavs, tiny_codec, tmp_path / "cache", chroma=True, progress=False)
    cache = TokenCache(tmp_path / "cache")
    assert cache.meta["chroma"] is True
    for i, m in enumerate([60, 64, 67]):
        item = cache[i]
        assert item["chroma"].shape == (item["codes"].shape[1],)
        expect = chroma_indices(tone([midi_hz(m)], 0.6)[None], SR, tiny_codec.hop_length,
                                n_frames=item["codes"].shape[1])[0]
        assert torch.equal(item["chroma"], expect) and (item["chroma"][2:-2] == m % 12).all()
    # resuming with another chroma setting is refused
    with pytest.raises(CodecLMError, match="chroma"):
        tokenize_corpus(wavs, tiny_codec, tmp_path / "cache", chroma=False, progress=False)


@pytest.fixture(scope="module")
def melody_pipe():
    from codeclm.codec import Codec
    from codeclm.lm.text_encoder import BuiltinTextConditioner
    from codeclm.tokenizers.text import CaptionTokenizer, train_caption_tokenizer
    from conftest import tiny_codec_config

    torch.manual_seed(0)
    codec = Codec(tiny_codec_config(bins=32)).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        model = train_caption_tokenizer(["calm piano", "fast drums", "sad strings"] * 20, Path(d) / "spm",
                                        vocab_size=30)
        tok = CaptionTokenizer(model)
    text = BuiltinTextConditioner(tok, dim=16, num_layers=1, num_heads=2)
    lm = TokenLM(LMConfig(n_q=2, card=32, dim=16, num_heads=2, num_layers=1, cross_attention=True,
                          max_seq_len=200, pattern="delay"))
    for p in lm.parameters():  # a random LM that actually listens to its conditioning
        p.data.normal_(0, 0.3)
    melody = MelodyConditioner(dim=16)
    melody.emb.weight.data.normal_(0, 1.0)
    return TextToMusic(lm, codec, text, melody=melody)


def test_music_pipeline_with_melody(melody_pipe, tmp_path):
    pipe = melody_pipe
    a4, d4 = tone([440.0], 1.0), tone([midi_hz(62)], 1.0)
    base = pipe.generate_tokens(["calm piano"], max_new_tokens=30)
    no_melody = pipe._generate_codes(["calm piano"], 29, 0, 3.0, 1.0, 250, 0.0, False)
    assert torch.equal(base, no_melody)
    with_a = pipe._generate_codes(["calm piano"], 29, 0, 3.0, 1.0, 250, 0.0, False,
                                  melody=pipe.melody_indices(a4[None], 1, 29))
    with_d = pipe._generate_codes(["calm piano"], 29, 0, 3.0, 1.0, 250, 0.0, False,
                                  melody=pipe.melody_indices(d4[None], 1, 29))
    assert not torch.equal(with_a, base) and not torch.equal(with_a, with_d)
    # the public API: a path or a tensor give the same audio; per-prompt melodies with None
    sf.write(tmp_path / "a4.wav", a4.numpy(), SR)
    out_path = pipe.generate(["calm piano"], duration=0.2, melody=str(tmp_path / "a4.wav"))
    out_tensor = pipe.generate(["calm piano"], duration=0.2, melody=a4[None])
    assert torch.equal(out_path[0], out_tensor[0]) and out_path[0].shape == (1, int(0.2 * SR))
    # (greedy: a sampled batch draws its random numbers for all rows at once)
    mixed = pipe.generate(["calm piano", "calm piano"], duration=0.2, melody=[a4[None], None], do_sample=False)
    alone = pipe.generate(["calm piano"], duration=0.2, melody=a4[None], do_sample=False)
    plain = pipe.generate(["calm piano"], duration=0.2, do_sample=False)
    assert torch.allclose(mixed[0], alone[0], atol=1e-5) and torch.allclose(mixed[1], plain[0], atol=1e-5)
    assert not torch.allclose(alone[0], plain[0], atol=1e-3)
    # save / load keeps the melody conditioner
    pipe.save_pretrained(tmp_path / "m")
    again = TextToMusic.from_pretrained(tmp_path / "m")
    assert again.has_melody and torch.equal(again.generate(["calm piano"], duration=0.2, melody=a4[None])[0],
                                            out_tensor[0])


def test_melody_bad_inputs(melody_pipe, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError) as err:
        melody_pipe.generate(["x"], duration=0.2, melody=str(bad))
    assert "bad.wav" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CodecLMError, match="melodies for"):
        melody_pipe.generate(["x", "y"], duration=0.2, melody=[tone([440.0])[None]])
    with pytest.raises(CodecLMError, match="too short"):
        melody_pipe.generate(["x"], duration=0.2, melody=torch.zeros(1, 10))
    no_melody = TextToMusic(melody_pipe.lm, melody_pipe.codec, melody_pipe.conditioner)
    with pytest.raises(CodecLMError, match="no melody"):
        no_melody.generate(["x"], duration=0.2, melody=tone([440.0])[None])


def test_melody_training_exports_a_melody_pipeline(tmp_path):
    """task: lm with lm.melody on a cache with chroma: trains, validates, exports melody/."""
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train
    from test_lm_training import TINY, make_cache, make_chroma_cache

    cache = make_chroma_cache(tmp_path / "cache", n=12)
    assert TokenCache(cache)[1]["chroma"].shape == TokenCache(cache)[1]["codes"][0].shape
    out = tmp_path / "run"
    train(load_recipe(TINY, [f"data.token_cache={cache}", f"out_dir={out}", "max_steps=3", "lm.melody=true",
                             "ckpt_every=0", "valid_every=3", "log_every=1"]))
    assert (out / "model" / "melody" / "model.safetensors").is_file()
    info = json.loads((out / "model" / "pipeline.json").read_text())
    assert info["type"] == "text-to-music"
    # a cache without chroma is refused for a melody recipe
    plain = make_cache(tmp_path / "plain", n=4)
    from codeclm.errors import ConfigError

    with pytest.raises(ConfigError, match="chroma"):
        train(load_recipe(TINY, [f"data.token_cache={plain}", f"out_dir={tmp_path / 'r2'}", "max_steps=1",
                                 "lm.melody=true"]))
