"""Reusable voices: the file format, the folder and its env override, the codec identity check,
the VoiceClone API with prepared voices, and `codeclm voice add|list|remove` / `clone|say --voice`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from codeclm.errors import CodecLMError, ConfigError
from codeclm.pipelines.voices import (PreparedVoice, check_voice_codec, list_voices, load_voice, remove_voice,
                                      save_voice, user_voices_dir)
from codeclm.tokenizers.sentences import fit_pieces, split_sentences

SENTENCES = ["Hello there, how are you today?", "The quick brown fox jumps over the lazy dog.",
             "She sells sea shells by the sea shore.", "Every kitchen on the hill was cleaned.", "What it says."]
IDENT = {"name": "codec-a", "sha256": "ab" * 32}


def _voice(name="anna", ident=IDENT):
    return PreparedVoice(name, torch.randint(0, 32, (3, 40)), "hello there", "en", dict(ident), "h@loU", 100.0, "r.wav")


def test_save_load_list_remove(tmp_path, monkeypatch):
    v = _voice()
    path = save_voice(v, tmp_path)
    assert path == tmp_path / "anna.voice.json" and json.loads(path.read_text())["format"] == 1
    back = load_voice("anna", tmp_path)
    assert torch.equal(back.codes, v.codes) and (back.transcript, back.language, back.phonemes) == (
        "hello there", "en", "h@loU") and back.codec_identity == IDENT and back.seconds == 0.4
    with pytest.raises(CodecLMError, match="exists"):
        save_voice(v, tmp_path)
    save_voice(v, tmp_path, force=True)
    save_voice(_voice("bob"), tmp_path)
    assert list_voices(tmp_path) == ["anna", "bob"]
    remove_voice("bob", tmp_path)
    assert list_voices(tmp_path) == ["anna"]
    with pytest.raises(CodecLMError, match="unknown voice 'bob'"):
        load_voice("bob", tmp_path)
    for bad in ("", "../x", "a/b", "-x", "x" * 65):
        with pytest.raises(CodecLMError, match="voice name"):
            save_voice(_voice(bad), tmp_path)
    monkeypatch.setenv("CODECLM_VOICES_DIR", str(tmp_path / "env"))
    assert user_voices_dir() == tmp_path / "env" and user_voices_dir(tmp_path) == tmp_path
    monkeypatch.delenv("CODECLM_VOICES_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_voices_dir() == tmp_path / "xdg" / "codeclm" / "voices"
    (tmp_path / "broken.voice.json").write_text('{"format": 1, "codes": []}')
    with pytest.raises(ConfigError, match="not a voice file") as e:
        load_voice("broken", tmp_path)
    assert "\n" not in str(e.value)


def test_another_codec_is_refused_in_one_line():
    check_voice_codec(_voice(), IDENT)
    with pytest.raises(ConfigError, match="prepared with codec 'codec-b'") as e:
        check_voice_codec(_voice(ident={"name": "codec-b", "sha256": "cd" * 32}), IDENT)
    assert "\n" not in str(e.value)


def test_sentences_pauses_and_splits_that_never_drop_words():
    pieces = split_sentences("Dr. Smith paid $5.20 today. How are you?\nFine!\n\nA new paragraph... yes.")
    assert [p.text for p in pieces] == ["Dr. Smith paid $5.20 today.", "How are you?", "Fine!", "A new paragraph...",
                                        "yes."]
    assert [p.pause for p in pieces] == [0.3, 0.35, 0.4, 0.4, 0.4]
    text = "one two three, four five six seven eight nine, ten. Short one."
    fitted = fit_pieces(split_sentences(text), lambda t: len(t.split()) <= 4)
    assert " ".join(p.text for p in fitted) == text  # nothing dropped
    assert all(len(p.text.split()) <= 4 for p in fitted)
    assert [p.split for p in fitted][:3] == ["comma", "words", "words"] and fitted[0].pause == 0.25
    with pytest.raises(CodecLMError, match="empty"):
        split_sentences(" \n ")


# -- with a tiny random VoiceClone folder --------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random VALL-E + codec + phoneme vocabulary saved as a voice-clone folder, and a reference."""
    import shutil

    import numpy as np
    import soundfile as sf

    from codeclm.codec import Codec
    from codeclm.lm.valle import Valle, ValleConfig
    from codeclm.pipelines import VoiceClone
    from conftest import tiny_codec_config

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("voices")
    torch.manual_seed(0)
    codec = Codec(tiny_codec_config(ratios=[8, 6, 5])).eval()  # 24 kHz, 100 frames/s
    from codeclm.tokenizers.phonemes import TextToPhonemes

    vocab = TextToPhonemes(["en"]).build_vocab([(t, "en") for t in SENTENCES])
    model = Valle(ValleConfig(n_q=3, card=codec.cardinality, vocab_size=len(vocab), dim=32, num_heads=2, ar_layers=1,
                              nar_layers=1, text_layers=1, max_frames=300, dropout=0.0, frame_rate=codec.frame_rate,
                              max_prompt_seconds=1.0, min_prompt_seconds=0.3)).eval()
    VoiceClone(model, codec, vocab).save_pretrained(root / "model")
    t = np.linspace(0, 2.0, 48000, endpoint=False)
    sf.write(root / "ref.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype("float32"),
             24000)
    return root


def _cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "codeclm.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_prepared_voice_is_the_reference_without_the_work(folder, tmp_path, monkeypatch):
    from codeclm.pipelines import VoiceClone

    pipe = VoiceClone.from_pretrained(folder / "model")
    ref = str(folder / "ref.wav")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        voice = pipe.prepare_voice(ref, "what it says", name="anna")
    assert any("cropped" in str(w.message) for w in caught)  # 2 s reference, 1 s limit: said once
    save_voice(voice, tmp_path)
    direct = pipe.generate("Hello there.", ref, "what it says", seed=3)
    calls = []
    monkeypatch.setattr(pipe, "_prompt", lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    by_name = pipe.generate("Hello there.", voice="anna", voices_dir=tmp_path, seed=3)
    by_object = pipe.generate("Hello there.", load_voice("anna", tmp_path), seed=3)
    assert not calls and torch.equal(by_name, direct) and torch.equal(by_object, direct)
    assert pipe.last_ref_text == voice.transcript
    assert torch.equal(pipe.say("Hello there.", voice="anna", voices_dir=tmp_path, seed=3), direct)
    other = _voice("other", {"name": "codec-b", "sha256": "cd" * 32})
    with pytest.raises(ConfigError, match="prepared with codec"):
        pipe.generate("Hi.", other)
    with pytest.raises(CodecLMError, match="unknown voice 'nobody'"):
        pipe.generate("Hi.", voice="nobody", voices_dir=tmp_path)


def test_long_text_is_split_into_sentences_with_pauses_and_never_cut(folder):
    from codeclm.pipelines import VoiceClone
    from codeclm.pipelines.longform import window_seed

    pipe = VoiceClone.from_pretrained(folder / "model")
    voice = pipe.prepare_voice(str(folder / "ref.wav"), "what it says")
    a, b = "Hello there.", "How are you today?"
    joined = pipe.generate(f"{a} {b}", voice, seed=5)
    first = pipe.generate(a, voice, seed=5)
    # sentence 2 uses seed window_seed(5, 1): spoken alone with that seed it is the same audio
    codes = pipe.model.generate_batch([pipe._phonemes(voice.transcript, b, "en")[0]], [voice.codes],
                                      [pipe._phonemes(voice.transcript, b, "en")[1]],
                                      generators=[torch.Generator().manual_seed(window_seed(5, 1))])[0]
    second = pipe.codec.decode(codes[None])[0]
    gap = round(0.35 * pipe.sample_rate) if a.endswith("?") else round(0.30 * pipe.sample_rate)
    assert joined.shape[-1] == first.shape[-1] + gap + second.shape[-1]
    assert torch.equal(joined[:, : first.shape[-1]], first)
    assert (joined[:, first.shape[-1]: first.shape[-1] + gap] == 0).all()
    assert torch.allclose(joined[:, first.shape[-1] + gap:], second, atol=1e-6)
    # a sentence longer than the model speaks at once: split between words, with a warning, no word lost
    long = " ".join(["hello there"] * 40) + "."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pieces = pipe.plan_text(long, voice.transcript, "en", voice.codes.shape[1])
    assert len(pieces) > 1 and " ".join(p.text for p in pieces) == long
    assert any("split between words" in str(w.message) for w in caught)
    # batch: item i == generate(item, seed + i), several sentences each
    batch = pipe.generate_batch([f"{a} {b}", a], [voice, voice], seed=5)
    assert torch.equal(batch[0], joined) and torch.equal(batch[1], pipe.generate(a, voice, seed=6))


def test_voice_command_line(folder, tmp_path):
    model, ref, vdir = str(folder / "model"), str(folder / "ref.wav"), str(tmp_path / "v")
    r = _cli("voice", "add", ref, "--name", "anna", "--ref-text", "what it says", "--model", model, "--voices-dir", vdir)
    assert r.returncode == 0, r.stderr
    assert "cropped" in r.stderr  # the note says the reference was cropped
    assert (tmp_path / "v" / "anna.voice.json").is_file()
    r = _cli("voice", "add", ref, "--name", "anna", "--ref-text", "x", "--model", model, "--voices-dir", vdir)
    assert r.returncode == 1 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("voice", "list", env={"CODECLM_VOICES_DIR": vdir})  # the env var names the folder
    assert r.returncode == 0 and r.stdout.startswith("anna\ten\t")
    out = tmp_path / "a.wav"
    r = _cli("clone", "--voice", "anna", "--text", "Hello there.", "-o", str(out), "--model", model,
             "--voices-dir", vdir, "-q")
    assert r.returncode == 0, r.stderr
    import soundfile as sf

    from codeclm.pipelines import VoiceClone

    data, _ = sf.read(out, dtype="float32")
    expect = VoiceClone.from_pretrained(model).generate("Hello there.", ref, "what it says", seed=0)
    assert abs(data - expect[0].numpy()).max() < 1e-4
    r = _cli("say", "Hello there.", "--voice", "anna", "-o", str(tmp_path / "s.wav"), "--model", model,
             "--voices-dir", vdir, "-q")
    assert r.returncode == 0 and (tmp_path / "s.wav").is_file(), r.stderr
    # another codec: refused in one line, nothing written
    v = json.loads((tmp_path / "v" / "anna.voice.json").read_text())
    v["codec_identity"]["sha256"] = "00" * 32
    (tmp_path / "v" / "bad.voice.json").write_text(json.dumps({**v, "name": "bad"}))
    r = _cli("clone", "--voice", "bad", "--text", "Hi.", "-o", str(tmp_path / "b.wav"), "--model", model,
             "--voices-dir", vdir)
    assert r.returncode == 1 and "prepared with codec" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.wav").exists()
    assert _cli("voice", "remove", "anna", "--voices-dir", vdir).returncode == 0
    r = _cli("voice", "remove", "anna", "--voices-dir", vdir)
    assert r.returncode == 1 and "unknown voice" in r.stderr
