"""VALL-E: AR/NAR shapes and masking, generation, training end to end, the VoiceClone pipeline
(prompt handling, bad input) and the clone/say command lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import soundfile as sf
import torch

from codeclm.errors import AudioError, CodecLMError, ConfigError
from codeclm.lm.valle import Valle, ValleConfig
from codeclm.tokenizers.normalize import TextError

REPO = Path(__file__).resolve().parents[1]


def tiny_valle(**kw) -> Valle:
    torch.manual_seed(0)
    cfg = dict(n_q=3, card=32, vocab_size=20, dim=32, num_heads=2, ar_layers=1, nar_layers=1, text_layers=1,
               max_frames=100, dropout=0.0)
    cfg.update(kw)
    return Valle(ValleConfig(**cfg)).eval()


def test_config_checks():
    with pytest.raises(ConfigError, match="n_q"):
        ValleConfig(n_q=1)
    with pytest.raises(ConfigError, match="prompt"):
        ValleConfig(min_prompt_seconds=5, max_prompt_seconds=3)
    c = ValleConfig(card=1024, n_q=6)
    assert c.ar_config().card == 1025 and c.ar_config().n_q == 1 and c.ar_config().causal
    assert c.nar_config().n_q == 6 and not c.nar_config().causal


def test_ar_loss_ignores_padding_and_is_causal():
    m = tiny_valle()
    g = torch.Generator().manual_seed(1)
    ph = torch.randint(5, 20, (2, 7), generator=g)
    pm = torch.ones(2, 7, dtype=torch.bool)
    codes = torch.randint(0, 32, (2, 12), generator=g)
    # item 1 has 8 real frames and 5 real phonemes; what lies beyond must not matter
    pm[1, 5:] = False
    frames = torch.tensor([12, 8])
    loss, _ = m.ar_loss(ph, pm, codes, frames)
    ph2, codes2 = ph.clone(), codes.clone()
    ph2[1, 5:] = 3
    codes2[1, 8:] = 7
    assert torch.allclose(loss, m.ar_loss(ph2, pm, codes2, frames)[0])
    # == the mean over the two items computed alone (token-weighted)
    l0, _ = m.ar_loss(ph[:1], pm[:1], codes[:1], frames[:1])
    l1, _ = m.ar_loss(ph[1:, :5], pm[1:, :5], codes[1:, :8], frames[1:])
    assert torch.allclose(loss, (l0 * 13 + l1 * 9) / 22, atol=1e-5)
    # causal: the logits of frame t do not see frames > t
    cond, mask = m.ar_text.encode_ids(ph[:1], pm[:1])
    seq = torch.cat([torch.full((1, 1), m.ar_start), codes[:1]], 1)[:, None]
    a = m.ar(seq, cond, mask)
    seq2 = seq.clone()
    seq2[..., 6:] = 5
    b = m.ar(seq2, cond, mask)
    assert torch.allclose(a[..., :6, :], b[..., :6, :], atol=1e-6) and not torch.allclose(a[..., 6:, :], b[..., 6:, :])


def test_nar_input_masks_unknown_levels_and_attends_both_ways():
    m = tiny_valle()
    g = torch.Generator().manual_seed(2)
    prompt, target = torch.randint(0, 32, (3, 4), generator=g), torch.randint(0, 32, (3, 6), generator=g)
    seq = m.nar_input(prompt, target, 2)
    assert seq.shape == (3, 10) and torch.equal(seq[:, :4], prompt) and torch.equal(seq[:2, 4:], target[:2])
    assert (seq[2, 4:] == 32).all()  # level 2 of the target: the special token
    # the loss at level j does not depend on the target's levels >= j (they are hidden)
    ph, pm = torch.randint(5, 20, (1, 6), generator=g), torch.ones(1, 6, dtype=torch.bool)
    codes = torch.cat([prompt, target], 1)[None]
    loss = m.nar_loss(ph, pm, codes, torch.tensor([10]), torch.tensor([4]), torch.tensor([1]))[0]
    codes2 = codes.clone()
    codes2[0, 2, 4:] = 0  # level 2 of the target changes: level-1 loss unchanged
    assert torch.equal(loss, m.nar_loss(ph, pm, codes2, torch.tensor([10]), torch.tensor([4]), torch.tensor([1]))[0])
    codes3 = codes.clone()
    codes3[0, 1, 4:] = (codes3[0, 1, 4:] + 1) % 32  # the target itself changes: the loss changes
    assert not torch.equal(loss, m.nar_loss(ph, pm, codes3, torch.tensor([10]), torch.tensor([4]), torch.tensor([1]))[0])
    # bidirectional: the first frame's logits see the last frame
    cond, mask = m.nar_text.encode_ids(ph, pm)
    a = m.nar(seq[None], cond, mask)
    seq2 = seq.clone()
    seq2[0, -1] = (seq2[0, -1] + 1) % 32
    assert not torch.allclose(a[:, :, 0], m.nar(seq2[None], cond, mask)[:, :, 0])


def test_generate_shapes_seed_and_stopping():
    m = tiny_valle()
    ph, prompt = torch.randint(5, 20, (9,)), torch.randint(0, 32, (3, 5))
    out = m.generate(ph, prompt, generator=torch.Generator().manual_seed(0), max_new_frames=20)
    assert out.dim() == 2 and out.shape[0] == 3 and 1 <= out.shape[1] <= 20 and out.max() < 32 and out.min() >= 0
    again = m.generate(ph, prompt, generator=torch.Generator().manual_seed(0), max_new_frames=20)
    assert torch.equal(out, again)
    # never EOS: stops at max_frames_per_phoneme * target phonemes
    with torch.no_grad():  # constant final hidden state; the head then always picks code 3
        m.ar.out_norm.weight.zero_()
        m.ar.out_norm.bias.fill_(1.0)
        m.ar.heads[0].weight.zero_()
        m.ar.heads[0].weight[3] = 10.0
    out = m.generate(ph, prompt, target_phonemes=2, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] == int(m.config.max_frames_per_phoneme * 2) and (out[0] == 3).all()
    # EOS always the best: it is masked for min_frames_per_phoneme * target phonemes, then taken
    with torch.no_grad():
        m.ar.heads[0].weight[32] = 20.0
    out = m.generate(ph, prompt, target_phonemes=2, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] == int(m.config.min_frames_per_phoneme * 2) and (out[0] == 3).all()
    m.config.min_frames_per_phoneme = 0.0  # without the floor: EOS at once is a clear error
    with pytest.raises(CodecLMError, match="no speech"):
        m.generate(ph, prompt, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CodecLMError, match="prompt codes"):
        m.generate(ph, prompt[:2])


def test_generation_matches_the_saved_run_of_the_loop_before_the_shared_one():
    """Valle.generate now runs on codeclm.lm.generate.iter_codes (EOS a stopping criterion, the
    minimum length a logits processor); tests/data holds codes of the old hand-written loop for
    the same tiny model, seeds and sampling settings: they are reproduced exactly."""
    ref = json.loads((REPO / "tests" / "data" / "valle_generate_before.json").read_text())
    m = tiny_valle()
    for case in ref["cases"]:
        out = m.generate(torch.tensor(case["phonemes"]), torch.tensor(case["prompt"]),
                         target_phonemes=case["target_phonemes"], temperature=case["temperature"],
                         top_k=case["top_k"], top_p=case["top_p"], do_sample=case["temperature"] > 0,
                         generator=torch.Generator().manual_seed(case["seed"]))
        assert out.tolist() == case["codes"], case


def test_generate_batch_is_one_forward_and_equals_each_item(monkeypatch):
    import codeclm.lm.generate as gen

    m = tiny_valle()
    g = torch.Generator().manual_seed(4)
    phs = [torch.randint(5, 20, (n,), generator=g) for n in (9, 6, 12)]
    voice, other = torch.randint(0, 32, (3, 7), generator=g), torch.randint(0, 32, (3, 5), generator=g)
    calls = []
    real = gen.iter_codes
    monkeypatch.setattr(gen, "iter_codes", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    seeds = [0, 1, 2]
    batch = m.generate_batch(phs, [voice] * 3, [None, 3, None],
                             generators=[torch.Generator().manual_seed(s) for s in seeds])
    assert calls == [3]  # one voice: the three AR decodes are one batch of 3
    singles = [m.generate(p, voice, tp, generator=torch.Generator().manual_seed(s))
               for p, tp, s in zip(phs, [None, 3, None], seeds)]
    assert all(torch.equal(a, b) for a, b in zip(batch, singles))
    assert len({x.shape[1] for x in batch}) > 1  # rows end at their own EOS
    calls.clear()  # two prompt lengths: two batches, results in the input order
    mixed = m.generate_batch(phs[:2], [voice, other], generators=[torch.Generator().manual_seed(s) for s in seeds[:2]])
    assert sorted(calls) == [1, 1]
    assert torch.equal(mixed[0], batch[0])
    assert torch.equal(mixed[1], m.generate(phs[1], other, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(CodecLMError, match="one prompt"):
        m.generate_batch(phs, [voice])


def test_logits_processor_and_stopping_criteria_on_the_shared_loop():
    from codeclm.lm.generate import generate_codes
    from codeclm.lm.logits import (EosStoppingCriteria, LogitsProcessorList, MaxNewTokensCriteria,
                                   MinNewTokensLogitsProcessor, StoppingCriteriaList)

    scores = torch.zeros(2, 1, 5)
    ids = torch.zeros(2, 1, 4, dtype=torch.long)
    out = LogitsProcessorList([MinNewTokensLogitsProcessor(2, torch.tensor([3, 1]), eos=4)])(ids, scores)
    assert out[0, 0, 4] == float("-inf") and out[1, 0, 4] == 0 and (out[:, :, :4] == 0).all()  # 2 new < 3, not < 1
    ids[1, 0, -1] = 4
    crit = StoppingCriteriaList([EosStoppingCriteria(4), MaxNewTokensCriteria(1, torch.tensor([9, 9]))])
    assert crit(ids, scores).tolist() == [False, True]
    assert MaxNewTokensCriteria(1, 3)(ids, scores).tolist() == [True, True]
    # on the loop: the row that emits EOS is padded, the loop ends when every row is done
    m = tiny_valle()
    with torch.no_grad():  # code 3 always, EOS (32) second best
        m.ar.out_norm.weight.zero_()
        m.ar.out_norm.bias.fill_(1.0)
        m.ar.heads[0].weight.zero_()
        m.ar.heads[0].weight[3] = 10.0
    cond, mask = m.ar_text.encode_ids(torch.randint(5, 20, (2, 4)), torch.ones(2, 4, dtype=torch.bool))
    codes = generate_codes(m.ar, m.ar.config.get_pattern(), 2, 50, cond, mask, do_sample=False,
                           stopping_criteria=StoppingCriteriaList([MaxNewTokensCriteria(0, torch.tensor([3, 6]))]),
                           pad_token_id=m.eos)
    assert codes.shape == (2, 1, 6)  # stopped when both rows were done, not after 50 frames
    assert codes[0, 0].tolist() == [3, 3, 3, 32, 32, 32] and codes[1, 0].tolist() == [3] * 6


def test_save_load_round_trip(tmp_path):
    m = tiny_valle()
    m.save_pretrained(tmp_path / "v")
    again = Valle.from_pretrained(tmp_path / "v")
    ph, pm = torch.randint(5, 20, (2, 9)), torch.ones(2, 9, dtype=torch.bool)
    codes, frames = torch.randint(0, 32, (2, 3, 8)), torch.tensor([8, 6])
    assert torch.equal(m.ar_loss(ph, pm, codes[:, 0], frames)[0], again.ar_loss(ph, pm, codes[:, 0], frames)[0])
    args = (ph, pm, codes, frames, torch.tensor([2, 3]), torch.tensor([1, 2]))
    assert torch.equal(m.nar_loss(*args)[0], again.nar_loss(*args)[0])
    (tmp_path / "v" / "config.json").write_text(json.dumps({"model_type": "codeclm-lm"}))
    with pytest.raises(ConfigError, match="VALL-E"):
        Valle.from_pretrained(tmp_path / "v")


def test_forward_is_both_training_losses():
    """Training calls the module's forward (what DDP wraps): the AR and NAR losses of one pass, and
    their gradients reach both stages."""
    m = tiny_valle().train()
    g = torch.Generator().manual_seed(3)
    ph, pm = torch.randint(5, 20, (2, 9), generator=g), torch.ones(2, 9, dtype=torch.bool)
    codes, frames = torch.randint(0, 32, (2, 3, 8), generator=g), torch.tensor([8, 6])
    prompts, levels = torch.tensor([2, 3]), torch.tensor([1, 2])
    out = m(ph, pm, codes, frames, prompts, levels)
    ar, ar_acc = m.ar_loss(ph, pm, codes[:, 0], frames)
    nar, nar_acc = m.nar_loss(ph, pm, codes, frames, prompts, levels)
    assert torch.equal(out["ar_ce"], ar) and torch.equal(out["nar_ce"], nar) and torch.equal(out["loss"], ar + nar)
    assert torch.equal(out["ar_acc"], ar_acc) and torch.equal(out["nar_acc"], nar_acc)
    out["loss"].backward()
    for stage in (m.ar, m.ar_text, m.nar, m.nar_text):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.parameters())


# -- training + pipeline, on espeak-ng speech and a tiny codec -------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny token cache of espeak-ng speech (en + de), 12 training steps, the exported folder."""
    from codeclm.codec import Codec
    from codeclm.data.synth_speech import synth_speech
    from codeclm.data.tokens import tokenize_corpus
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train
    from conftest import tiny_codec_config

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("valle")
    records = synth_speech(root / "en", 8, ["en-us"], seed=0, progress=False)
    records += synth_speech(root / "de", 4, ["de"], seed=1, progress=False)
    torch.manual_seed(0)
    codec = Codec(tiny_codec_config(ratios=[8, 6, 5])).eval()  # 100 frames/s
    codec.save_pretrained(root / "codec")
    tokenize_corpus(records, codec, root / "cache", progress=False)
    voice = records[0].speaker
    cfg = load_recipe(REPO / "recipes" / "valle_tiny.yaml",
                      [f"data.token_cache={root / 'cache'}", f"out_dir={root / 'run'}", "max_steps=12",
                       f"valle.codec={root / 'codec'}", "log_every=1", "valid_every=12", "ckpt_every=12",
                       f"valle.voices={{first: '{voice}'}}", "valle.voice_seconds=[0.5,10]",
                       "data.valid_fraction=0.5"])  # the split hashes the (temporary) path: never empty in practice
    train(cfg)
    return root, records


def test_training_logs_and_exports_a_voice_clone_folder(trained):
    from codeclm.pipelines import VoiceClone

    root, records = trained
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    ar = [r["train/ar_ce"] for r in rows if "train/ar_ce" in r]
    nar = [r["train/nar_ce"] for r in rows if "train/nar_ce" in r]
    assert len(ar) == 12 and all(map(lambda x: x == x, ar + nar))  # finite
    assert sum(ar[-3:]) < sum(ar[:3]) and sum(nar[-3:]) < sum(nar[:3])  # it learns
    assert any("valid/ar_ce" in r for r in rows)
    folder = root / "run" / "model"
    info = json.loads((folder / "pipeline.json").read_text())
    assert info["type"] == "voice-clone" and info["languages"] == ["de", "en"]
    pipe = VoiceClone.from_pretrained(folder)
    assert pipe.sample_rate == 24000 and list(pipe.voices) == ["first"]
    assert pipe.voices["first"]["text"] == records[0].text


@pytest.fixture(scope="module")
def pipe(trained):
    from codeclm.pipelines import VoiceClone

    return VoiceClone.from_pretrained(trained[0] / "run" / "model")


def test_clone_generates_deterministic_audio(pipe, trained):
    ref = trained[1][1]
    out = pipe.generate("Hello there, how are you?", ref.path, ref_text=ref.text, seed=0)
    assert out.dtype == torch.float32 and out.dim() == 2 and out.shape[0] == 1 and out.shape[1] > 0
    assert torch.isfinite(out).all()
    assert torch.equal(out, pipe.generate("Hello there, how are you?", ref.path, ref_text=ref.text, seed=0))
    assert pipe.last_ref_text == ref.text
    # a tensor reference (any rate) is the same as the file
    wav, sr = sf.read(ref.path, dtype="float32")
    from_tensor = pipe.generate("Hello there, how are you?", (torch.from_numpy(wav)[None], sr), ref.text, seed=0)
    assert torch.equal(out, from_tensor)
    # German, and plain TTS with a named voice
    assert pipe.generate("Guten Morgen.", trained[1][9].path, trained[1][9].text, language="de").shape[1] > 0
    assert pipe.say("Good morning.", voice="first").shape[1] > 0
    batch = pipe.generate_batch(["One.", "Two."], [ref.path, ref.path], [ref.text, ref.text], seed=5)
    assert torch.equal(batch[1], pipe.generate("Two.", ref.path, ref.text, seed=6))


def test_reference_handling_and_bad_input(pipe, trained, tmp_path):
    ref = trained[1][1]
    wav, sr = sf.read(ref.path, dtype="float32")
    # leading/trailing silence is trimmed: padding the reference changes nothing
    padded = tmp_path / "padded.wav"
    sf.write(padded, __import__("numpy").concatenate([0 * wav[:sr // 2], wav, 0 * wav[:sr // 3]]), sr)
    assert torch.equal(pipe.generate("Hi.", ref.path, ref.text), pipe.generate("Hi.", str(padded), ref.text))
    # longer than max_prompt_seconds (4 s here): cropped, with a note; German text cut by proportion
    long = tmp_path / "long.wav"
    sf.write(long, __import__("numpy").concatenate([wav, wav, wav]), sr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.generate("Hallo.", str(long), "eins zwei drei vier fuenf sechs sieben acht neun", language="de")
    assert any("cropped" in str(w.message) for w in caught)
    assert 1 <= len(pipe.last_ref_text.split()) < 9
    codes, _ = pipe._prompt(str(long), "x", "de", "long")
    assert int(3 * pipe.codec.frame_rate) < codes.shape[1] <= int(4 * pipe.codec.frame_rate) + 1
    # refused: silent, too short, unreadable; empty text; languages the model lacks
    silent = tmp_path / "silent.wav"
    sf.write(silent, 0 * wav, sr)
    short = tmp_path / "short.wav"
    sf.write(short, wav[: int(0.1 * sr)] + 0.1, sr)
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    for call, err, what in [
        (lambda: pipe.generate("Hi.", str(silent), "x"), AudioError, "silent"),
        (lambda: pipe.generate("Hi.", str(short), "x"), AudioError, "at least"),
        (lambda: pipe.generate("Hi.", str(bad), "x"), AudioError, "bad.wav"),
        (lambda: pipe.generate("  ", ref.path, ref.text), TextError, "empty"),
        (lambda: pipe.generate("Hi.", ref.path, ref.text, language="fr"), TextError, "not supported"),
        (lambda: pipe.generate("Hi.", ref.path, ref.text, language="xx"), TextError, "unsupported"),
        (lambda: pipe.generate("Hi.", torch.zeros(3, 2, 2), "x"), AudioError, "tensor"),
        (lambda: pipe.say("Hi.", voice="nobody"), CodecLMError, "unknown voice"),
    ]:
        with pytest.raises(err) as info:
            call()
        assert what in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_missing_transcript_is_transcribed_offline(pipe, trained):
    pytest.importorskip("pocketsphinx")
    ref = trained[1][1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe.generate("Hello.", ref.path, None)
    assert out.shape[1] > 0 and any("transcribed offline" in str(w.message) for w in caught)
    assert pipe.last_ref_text and pipe.last_ref_text.strip()
    with pytest.raises(TextError, match="ref_text"):
        pipe.generate("Hallo.", trained[1][9].path, None, language="de")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "codeclm.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_clone_and_say_command_lines(trained, tmp_path):
    root, records = trained
    model = str(root / "run" / "model")
    ref = records[1]
    out = tmp_path / "out.wav"
    r = _cli("clone", "--ref", ref.path, "--ref-text", ref.text, "--text", "Hello there.", "-o", str(out),
             "--model", model, "-q")
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out, dtype="float32")
    from codeclm.pipelines import VoiceClone

    expect = VoiceClone.from_pretrained(model).generate("Hello there.", ref.path, ref.text, seed=0)
    assert sr == 24000 and abs(data - expect[0].numpy()).max() < 1e-4  # 16-bit wav of the same audio
    assert _cli("clone", "--ref", ref.path, "--text", "x", "-o", str(out), "--model", model).returncode == 1  # exists
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"text": "One.", "ref": ref.path, "ref_text": ref.text}) + "\n" +
                    json.dumps({"text": "Zwei.", "ref": records[9].path, "ref_text": records[9].text,
                                "language": "de"}) + "\n")
    r = _cli("clone", "--jobs-file", str(jobs), "--out-dir", str(tmp_path / "o"), "--model", model, "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000_one.wav", "001_zwei.wav"]
    r = _cli("say", "--list-voices", "--model", model)
    assert r.returncode == 0 and r.stdout.startswith("first\ten\t")
    r = _cli("say", "Good day.", "--voice", "first", "-o", str(tmp_path / "say.wav"), "--model", model, "-q")
    assert r.returncode == 0 and (tmp_path / "say.wav").is_file()
    for args, msg in [
        (("clone", "--ref", str(tmp_path / "none.wav"), "--text", "x", "-o", str(tmp_path / "a.wav"), "--model", model),
         "none.wav"),
        (("clone", "--ref", ref.path, "--text", " ", "-o", str(tmp_path / "a.wav"), "--model", model), "empty"),
        (("clone", "--ref", ref.path, "--text", "x", "-o", str(tmp_path / "a.mp9"), "--model", model), "extension"),
        (("clone", "--ref", ref.path, "--text", "x", "-o", str(tmp_path / "a.wav"), "--model", str(tmp_path)),
         "not a voice-clone"),
        (("say", "x", "--voice", "nobody", "-o", str(tmp_path / "b.wav"), "--model", model), "unknown voice"),
        (("say", "x", "--speed", "fast", "-o", str(tmp_path / "b.wav"), "--model", model), "speed must be"),
        (("clone", "--ref", ref.path, "--text", "x", "-o", str(tmp_path / "a.wav"), "--model", model, "--speed", "1.2"),
         "--speed is for the duration-guided"),
    ]:
        r = _cli(*args)
        assert r.returncode == 1 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "a.wav").exists() and not (tmp_path / "b.wav").exists()


def test_export_for_shipping(trained, tmp_path):
    from codeclm.pipelines import VoiceClone
    from codeclm.cli.export import main
    from codeclm.pipelines.export import export

    root, records = trained
    src = root / "run" / "model"
    ref = records[1]
    same = VoiceClone.from_pretrained(export(src, tmp_path / "fp32", dtype="float32"))
    expect = VoiceClone.from_pretrained(src).generate("Hi there.", ref.path, ref.text, seed=1)
    assert torch.equal(same.generate("Hi there.", ref.path, ref.text, seed=1), expect)
    assert main([str(src), str(tmp_path / "fp16")]) == 0
    half = tmp_path / "fp16"
    from safetensors import safe_open

    with safe_open(str(half / "valle" / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    assert sorted(p.name for p in (half / "voices").iterdir()) == ["first.wav", "voices.json"]
    assert VoiceClone.from_pretrained(half).say("Hello.").shape[1] > 0
    assert main([str(src), str(half)]) == 1  # exists: refused without --force
    assert main([str(tmp_path), str(tmp_path / "x")]) == 1  # not a pipeline folder


def test_two_processes_clone_the_same_files(trained, tmp_path):
    """torchrun with 2 CPU processes splits a jobs file and writes exactly the one-process files."""
    import numpy as np

    from test_sharding import _free_port

    root, records = trained
    jobs = tmp_path / "jobs.jsonl"
    rows = [{"text": t, "ref": r.path, "ref_text": r.text, "language": "en"}
            for t, r in zip(["One.", "Two words.", "Three more words."], records[1:4])]
    jobs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    args = [str(REPO / "generate.py"), "clone", "--jobs-file", str(jobs), "--model", str(root / "run" / "model"),
            "--seed", "3", "--device", "cpu"]
    outs = {}
    for name, launcher in [("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                    "--master_port", str(_free_port())])]:
        run = subprocess.run(launcher + args + ["--out-dir", str(tmp_path / name)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        outs[name] = run.stderr
    assert "[process 0/2]" in outs["two"] and "[process 1/2]" in outs["two"]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 3 and names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for n in names:
        assert np.array_equal(sf.read(tmp_path / "one" / n)[0], sf.read(tmp_path / "two" / n)[0]), n


def test_tts_eval_espeak_through_a_codec_is_the_ceiling_line(tmp_path):
    """--espeak --espeak-codec: espeak-ng's speech after a round trip through a codec (a random tiny
    one here: its output cannot be easier to recognise than espeak-ng itself); --espeak-codec alone
    is a one-line error."""
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    from codeclm.codec.frame import FrameCodec, FrameCodecConfig

    torch.manual_seed(0)
    FrameCodec(FrameCodecConfig(encoder_dim=16, encoder_layers=1, decoder_dim=16, decoder_layers=1, dimension=8,
                                bins=16, target_bandwidths=[0.8])).save_pretrained(tmp_path / "codec")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "benchmarks" / "tts_eval.py")

    def run(*args):
        return subprocess.run([sys.executable, script, "--tiny", *args], capture_output=True, text=True, timeout=600, env=env)

    plain, coded = run("--espeak"), run("--espeak", "--espeak-codec", str(tmp_path / "codec"), "--bandwidth", "0.8")
    assert plain.returncode == 0 and coded.returncode == 0, (plain.stderr + coded.stderr)[-2000:]
    a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (plain, coded))
    assert b["model"] == f"espeak-ng en-us through {tmp_path / 'codec'} at 0.8 kbps" and b["n"] == a["n"] == 2
    assert b["wer"] >= a["wer"]
    bad = run("--espeak-codec", str(tmp_path / "codec"))
    assert bad.returncode != 0 and bad.stderr.strip() == "tts_eval.py: error: --espeak-codec needs --espeak"


def test_tts_eval_benchmark_runs_on_a_tiny_case(trained, tmp_path):
    """The evaluation CI runs: benchmarks/tts_eval.py --tiny and codeclm eval clone on the tiny model."""
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    model = str(trained[0] / "run" / "model")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tts_eval.py"), "--model", model, "--tiny"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["n"] == 2 and 0 <= result["wer"] and result["rtf"] > 0
    assert -1 <= result["sim_own"] <= 1 and -1 <= result["sim_other"] <= 1
    ref = trained[1][1]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"ref": ref.path, "ref_text": ref.text, "text": "Hello there."}) + "\n" +
                     json.dumps({"ref": trained[1][2].path, "ref_text": trained[1][2].text, "text": "Good day."}) + "\n")
    r = _cli("eval", "clone", "--model", model, str(pairs), "--json", "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 2 and {"wer", "sim_own", "sim_other", "rtf"} <= set(out)
