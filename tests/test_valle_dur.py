"""Duration-guided VALL-E: espeak-ng alignments, the model's exact output length, training, the
pipeline path (and, slow, the shipped model's output is speech-like for several seeds and voices)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from codeclm.errors import CodecLMError
from codeclm.tokenizers.phonemes import WORD_SEP

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")
REPO = Path(__file__).resolve().parents[1]


def test_espeak_alignment_is_monotonic_complete_and_sums_to_the_audio():
    from codeclm.tokenizers.align import SILENCE, Espeak, durations_from_alignment

    eng = Espeak()
    for voice, rate, text in [("en-us+m3", 160, "Hello there, the quick brown fox jumped over the lazy dog."),
                              ("en-gb-scotland+f2", 190, "Did one story really see nine painters in the park?")]:
        u = eng.synth(text, voice, rate, 50)
        N = len(u.audio)
        assert u.sample_rate == 22050 and N > u.sample_rate  # over a second of speech
        assert u.tokens[0] == SILENCE and u.tokens[-1] == SILENCE and len(u.tokens) > 20
        assert u.starts[0] == 0 and u.ends[-1] == N
        for i in range(len(u.tokens)):  # contiguous spans covering [0, N), word separators empty
            assert u.starts[i] <= u.ends[i]
            if i:
                assert u.starts[i] == u.ends[i - 1]
            if u.tokens[i] == WORD_SEP:
                assert u.starts[i] == u.ends[i]
            elif 0 < i < len(u.tokens) - 1:
                assert u.ends[i] > u.starts[i], u.tokens[i]
        n_frames = math.ceil(N / u.sample_rate * 50)
        align = u.frame_alignment(n_frames, 50.0)
        assert align.shape == (n_frames,) and (np.diff(align) >= 0).all()
        dur = durations_from_alignment(align, len(u.tokens))
        assert dur.sum() == n_frames
        assert all(dur[i] == 0 for i, t in enumerate(u.tokens) if t == WORD_SEP)
        # a frame's phoneme is the one sounding at its centre
        for f in (3, n_frames // 2, n_frames - 3):
            c = (f + 0.5) / 50 * u.sample_rate
            k = int(align[f])
            assert u.starts[k] <= c < u.ends[k] or k == len(u.tokens) - 1
    # repeatable: the same tokens; espeak-ng carries a little state between calls (spans move by a
    # few samples from call to call, by ~240 after another voice spoke), so they agree within a frame
    a, b = eng.synth("Thank you very much.", "en-us", 175, 50), eng.synth("Thank you very much.", "en-us", 175, 50)
    assert a.tokens == b.tokens and max(abs(x - y) for x, y in zip(a.starts, b.starts)) < 441


def test_espeak_tokens_are_the_phonemizer_phones():
    from codeclm.tokenizers.align import PAUSE, SILENCE, Espeak
    from codeclm.tokenizers.phonemes import STRESS, Phonemizer, split_phonemes

    text = "the quick brown fox jumps over the lazy dog"
    ours = [t for t in Espeak().synth(text, "en-us").tokens if t not in (SILENCE, PAUSE)]
    theirs = [t for t in split_phonemes(Phonemizer("en")(text)) if t not in STRESS]
    assert ours == theirs


def test_scaled_durations_keep_the_total_and_every_phone():
    from codeclm.tokenizers.align import scaled_durations

    tokens = [".", "h", "|", "ə", "l", "."]
    d = np.array([1, 4, 0, 3, 5, 2])
    for f in (0.6, 1.0, 1.37, 1.8):
        out = scaled_durations(d, tokens, f)
        assert out[2] == 0 and (out[[0, 1, 3, 4, 5]] >= 1).all()
        assert abs(int(out.sum()) - round(d.sum() * f)) <= 2


def tiny_config(**kw):
    from codeclm.lm.valle_dur import DurValleConfig

    base = dict(n_q=3, card=16, vocab_size=12, dim=32, num_heads=2, ar_layers=1, nar_layers=1, text_layers=1,
                dropout=0.0, max_frames=120, max_prompt_seconds=1.0, min_prompt_seconds=0.2)
    return DurValleConfig(**{**base, **kw})


def test_frame_positions():
    from codeclm.lm.valle_dur import frame_positions

    idx, pos, left = frame_positions(torch.tensor([0, 2, 0, 3]))
    assert idx.tolist() == [1, 1, 3, 3, 3] and pos.tolist() == [0, 1, 0, 1, 2] and left.tolist() == [1, 0, 2, 1, 0]


def test_output_length_is_the_sum_of_durations_and_decoding_matches_teacher_forcing():
    from codeclm.lm.conditioning import FusedCondition
    from codeclm.lm.valle_dur import DurValle

    torch.manual_seed(0)
    m = DurValle(tiny_config()).eval()
    prompt = torch.randint(0, 16, (3, 20))
    tok = torch.randint(5, 12, (9,))
    for d in (torch.tensor([0, 1, 2, 0, 5, 1, 1, 3, 2]), torch.tensor([0, 7, 0, 0, 1, 1, 1, 1, 9])):
        for seed in (0, 1):
            g = torch.Generator().manual_seed(seed)
            out = m.generate(tok, d, prompt, generator=g)
            assert out.shape == (3, int(d.sum())) and int(out.min()) >= 0 and int(out.max()) < 16
    d = torch.tensor([0, 1, 2, 0, 5, 1, 1, 3, 2])
    m.ar_int8 = False  # the exact float32 path (int8 steps are an approximation, checked for shape above)
    greedy = m.generate(tok, d, prompt, do_sample=False)
    idx, pos, left = m.layout([20], [d])
    cond = m.ar_cond(tok[None], torch.ones(1, 9, dtype=torch.bool), idx, pos, left)
    seq = torch.cat([prompt[0], greedy[0]])
    inp = torch.cat([torch.tensor([m.start]), seq[:-1]])[None, None]
    assert torch.equal(m.ar(inp, FusedCondition(sum=cond))[0, 0].argmax(-1)[20:], greedy[0])
    # a batch of items with one prompt: each item as alone (own generator), own length
    d2 = torch.tensor([0, 3, 3, 0, 1, 1, 1, 1, 1])
    a = m.generate_batch([tok, tok], [d, d2], prompt, generators=[torch.Generator().manual_seed(5),
                                                                  torch.Generator().manual_seed(6)])
    assert [x.shape[1] for x in a] == [int(d.sum()), int(d2.sum())]
    alone = m.generate(tok, d2, prompt, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[1], alone)
    with pytest.raises(Exception, match="exceed"):
        m.generate(tok, torch.full((9,), 20), prompt)


@pytest.mark.parametrize("native, forced, expect", [(False, None, torch.float32), (True, None, torch.bfloat16),
                                                     (False, True, torch.bfloat16), (True, False, torch.float32)])
def test_the_nar_runs_in_bf16_only_where_the_cpu_has_it(monkeypatch, native, forced, expect):
    """Emulated bf16 (a CPU without AMX / AVX512-BF16) made the NAR 1.7x slower than float32: by
    default it is used only where the hardware has it; ``nar_bf16`` forces either."""
    import codeclm.lm.valle_dur as vd

    torch.manual_seed(0)
    m = vd.DurValle(tiny_config()).eval()
    m.nar_bf16 = forced
    monkeypatch.setattr(vd, "cpu_has_native_bf16", lambda: native)
    seen = []
    m.nar.heads[1].register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    out = m.generate(torch.randint(5, 12, (4,)), torch.tensor([1, 2, 1, 2]), torch.randint(0, 16, (3, 10)),
                     do_sample=False)
    assert out.shape == (3, 6) and seen and set(seen) == {expect}


def test_fill_nar_is_the_second_stage_of_generate_and_the_nar_prompt_crop():
    """``fill_nar`` on the AR's own first codebook gives ``generate``'s codes; with
    ``nar_prompt_seconds`` the NAR sees only the prompt's last frames (exactly a shorter prompt)."""
    from codeclm.lm.valle_dur import DurValle

    torch.manual_seed(0)
    m = DurValle(tiny_config()).eval()
    m.ar_int8 = False
    prompt = torch.randint(0, 16, (3, 20))  # 0.4 s at 50 frames/s
    tok, d = torch.randint(5, 12, (6,)), torch.tensor([0, 2, 3, 1, 4, 2])
    out = m.generate(tok, d, prompt, generator=torch.Generator().manual_seed(3))
    assert torch.equal(m.fill_nar(tok, d, prompt, out[0]), out)
    m.nar_prompt_seconds = 0.1  # 5 frames
    cropped = m.fill_nar(tok, d, prompt, out[0])
    m.nar_prompt_seconds = None
    assert torch.equal(cropped, m.fill_nar(tok, d, prompt[:, -5:], out[0]))
    assert torch.equal(cropped[0], out[0])
    with pytest.raises(Exception, match="first codebook has"):
        m.fill_nar(tok, d, prompt, out[0, :-1])


def test_a_tiny_model_learns_the_frame_aligned_codes():
    """Codes that are a function of the frame's phoneme and position: the loss must fall far."""
    from codeclm.lm.valle_dur import DurValle

    torch.manual_seed(0)
    m = DurValle(tiny_config(dim=48)).train()
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)

    def batch():
        toks, durs, prompts, targets = [], [], [], []
        for _ in range(6):
            t = torch.randint(5, 12, (8,), generator=g)
            d = torch.randint(1, 4, (8,), generator=g)
            idx = torch.repeat_interleave(torch.arange(8), d)
            pos = torch.arange(idx.shape[0]) - (torch.cumsum(d, 0) - d)[idx]
            codes = torch.stack([(t[idx] + k * pos) % 16 for k in range(3)])
            toks.append(t), durs.append(d), targets.append(codes), prompts.append(torch.randint(0, 16, (3, 6), generator=g))
        tok = torch.stack(toks)
        return tok, tok != 0, durs, prompts, targets, torch.randint(1, 3, (6,), generator=g)

    losses = []
    for _ in range(120):
        out = m(*batch())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Aligned data of 3 speakers, 4 training steps through train.py, the exported folder."""
    from codeclm.data.aligned_speech import build_aligned_speech, load_aligned

    root = tmp_path_factory.mktemp("valle_dur")
    build_aligned_speech(root / "data", speakers=3, per_speaker=3, seed=0, codec_folder=REPO / "checkpoints" / "codec",
                         progress=False)
    import subprocess
    import sys

    cmd = [sys.executable, str(REPO / "train.py"), str(REPO / "recipes" / "valle_dur.yaml"), f"out_dir={root / 'run'}",
           f"data.aligned={root / 'data'}", "max_steps=4", "log_every=2", "valid_every=4", "ckpt_every=4",
           "data.batch_size=3", "model.dim=32", "model.num_heads=2", "model.ar_layers=1", "model.nar_layers=1",
           "model.text_layers=1", "data.valid_fraction=0.2", "mixed_precision=no",
           f"valle.codec={REPO / 'checkpoints' / 'codec'}", f"valle.voices={REPO / 'checkpoints' / 'voice' / 'voices'}"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return root, load_aligned(root / "data")


def test_aligned_data_and_training_export(trained):
    root, (records, codes, info) = trained
    assert info["n_q"] == 6 and info["frame_rate"] == 50.0 and len(records) == 9
    for r, c in zip(records, codes):
        assert sum(r["durations"]) == r["n_frames"] == c.shape[1] and len(r["durations"]) == len(r["tokens"])
        assert not r["voice"].startswith("en-us-nyc")
    from codeclm.pipelines.clone import VoiceClone
    from codeclm.pipelines.clone_dur import espeak_durations, speaking_rate, text_plan

    pipe = VoiceClone.from_pretrained(root / "run" / "model")
    assert pipe.duration_guided and pipe.languages == ("en",)
    ref = REPO / "checkpoints" / "voice" / "voices" / "us_male.wav"
    text = "Thank you very much. Please call me today."
    wav = pipe.generate(text, str(ref), ref_text="One song wrote our wooden computer quickly.", seed=0)
    assert torch.equal(wav, pipe.generate(text, str(ref), ref_text="One song wrote our wooden computer quickly.", seed=0))
    prompt, ref_text, _ = pipe._job(text, str(ref), "One song wrote our wooden computer quickly.", "en", None, None)
    hop = pipe.sample_rate // 50

    def planned_samples(factor):
        plan = text_plan(pipe, text, "en", factor, prompt.shape[1])
        assert len(plan) == 2  # two sentences, each exactly its planned frames, joined by a pause
        return sum(int(d.sum()) for _, _, d in plan) * hop + round(plan[0][0].pause * pipe.sample_rate)

    assert wav.shape[1] == planned_samples(1.0)  # default: espeak-ng's pace
    # speed: the reference's own speaking rate, or a multiple of espeak-ng's pace
    factor = speaking_rate(prompt.shape[1], ref_text, 50.0)
    for speed, f in (("reference", factor), (2.0, 0.5), ("0.8", 1.25)):
        out = pipe.generate(text, str(ref), ref_text="One song wrote our wooden computer quickly.", seed=0, speed=speed)
        assert out.shape[1] == planned_samples(f), speed
    for bad in (3.0, "fast", float("nan")):
        with pytest.raises(CodecLMError, match="speed must"):
            pipe.generate(text, str(ref), ref_text="x", seed=0, speed=bad)
    assert pipe.say("Hello there.", voice="us_male", seed=0).shape[1] > 0
    tokens, dur = espeak_durations("Thank you very much.", 50.0)
    assert tokens[0] == "." and dur.sum() > 20


def test_voice_stages_benchmark_on_the_tiny_model(trained, capsys):
    """benchmarks/voice_stages.py: the same recogniser on espeak-ng's rendering, its codec round
    trip, its first codebook + the NAR, and AR + NAR; the losses are the differences."""
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    import importlib.util

    spec = importlib.util.spec_from_file_location("voice_stages", REPO / "benchmarks" / "voice_stages.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--model", str(trained[0] / "run" / "model"), "--n", "2", "--results", ""])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    wer, loss = out["wer"], out["loss"]
    assert out["n"] == 2 and out["words"] > 4 and set(wer) == {"espeak", "codec", "nar", "full"}
    assert wer["espeak"] < 1.0  # espeak-ng's own rendering is (partly) recognised
    assert loss["codec"] == pytest.approx(wer["codec"] - wer["espeak"], abs=2e-4)
    assert loss["nar"] == pytest.approx(wer["nar"] - wer["codec"], abs=2e-4)
    assert loss["ar"] == pytest.approx(wer["full"] - wer["nar"], abs=2e-4)


def voiced_ratio(wav: torch.Tensor, sr: int) -> float:
    """Share of 20 ms frames within 30 dB of the loudest frame, 0 when the level barely moves
    (a steady hum: speech's syllables modulate the level by well over 4 dB)."""
    x = wav[0].numpy()
    hop = sr // 50
    n = len(x) // hop
    fr = x[: n * hop].reshape(n, hop)
    db = 10 * np.log10((fr ** 2).mean(1) + 1e-12)
    loud = db > db.max() - 30
    if loud.sum() < 5 or db[loud].std() < 4.0:
        return 0.0
    return float(loud.mean())


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "checkpoints" / "voice" / "pipeline.json").is_file(), reason="no shipped voice model")
def test_shipped_voice_model_output_is_not_mostly_silent():
    from codeclm.pipelines.clone import VoiceClone
    from codeclm.pipelines.clone_dur import espeak_durations

    pipe = VoiceClone.from_pretrained()
    if not pipe.duration_guided:
        pytest.skip("the shipped voice model is not the duration-guided one")
    text = "Hello, this voice was cloned by codeclm."
    expect = espeak_durations(text, 50.0)[1].sum() / 50
    for voice in ("us_male", "allison", "scottish"):
        for seed in (0, 1, 2):
            wav = pipe.say(text, voice=voice, seed=seed)
            seconds = wav.shape[1] / pipe.sample_rate
            assert 0.5 * expect < seconds < 2.0 * expect, (voice, seed, seconds, expect)
            assert voiced_ratio(wav, pipe.sample_rate) > 0.5, (voice, seed)


def _state(folder: Path) -> dict:
    from codeclm.pretrained import read_weights

    return {k: v.float() for k, v in read_weights(folder).items()}


def test_init_from_an_export_starts_at_its_weights_and_checks_the_vocab(trained, tmp_path):
    """``init_from``: a fresh run starts at an export's weights (1 step at a vanishing LR leaves
    them), a resumed run keeps its own checkpoint, another architecture or phoneme numbering is a
    one-line error."""
    from codeclm.errors import ConfigError
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train

    root, _ = trained
    start = root / "run" / "model"
    args = [f"data.aligned={root / 'data'}", "data.batch_size=3", "model.dim=32", "model.num_heads=2",
            "model.ar_layers=1", "model.nar_layers=1", "model.text_layers=1", "data.valid_fraction=0.2",
            "mixed_precision=no", "valid_every=0", "ckpt_every=0", "optim.warmup_steps=0", "optim.weight_decay=0"]
    out = tmp_path / "tuned"
    train(load_recipe(REPO / "recipes" / "valle_dur.yaml",
                      [*args, f"out_dir={out}", "max_steps=1", "optim.lr=1e-12", f"init_from={start}"]))
    a, b = _state(start / "valle"), _state(out / "model" / "valle")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    scratch = tmp_path / "scratch"
    train(load_recipe(REPO / "recipes" / "valle_dur.yaml", [*args, f"out_dir={scratch}", "max_steps=1", "optim.lr=1e-12", "seed=5"]))
    c = _state(scratch / "model" / "valle")
    assert any(not torch.allclose(a[k], c[k], atol=1e-3) for k in a)  # from scratch (another seed): other weights
    # resuming (max_steps=2 over the 1-step checkpoint) ignores init_from: the run's own weights go on
    train(load_recipe(REPO / "recipes" / "valle_dur.yaml",
                      [*args, f"out_dir={scratch}", "max_steps=2", "optim.lr=1e-12", "seed=5",
                       f"init_from={start}"]))
    d = _state(scratch / "model" / "valle")
    assert all(torch.allclose(c[k], d[k], atol=1e-6) for k in c)

    with pytest.raises(ConfigError, match="init_from") as err:
        train(load_recipe(REPO / "recipes" / "valle_dur.yaml",
                          [*args, f"out_dir={tmp_path / 'wide'}", "model.dim=64", f"init_from={start}"]))
    assert "\n" not in str(err.value)
    other = tmp_path / "other"
    shutil.copytree(start, other)
    vocab = other / "phonemes" / "phoneme_vocab.json"
    import json

    data = json.loads(vocab.read_text())
    data["tokens"] = data["tokens"][:-1]
    vocab.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="phoneme vocabulary"):
        train(load_recipe(REPO / "recipes" / "valle_dur.yaml", [*args, f"out_dir={tmp_path / 'v'}", f"init_from={other}"]))
    with pytest.raises(ConfigError, match="no such model folder"):
        load_recipe(REPO / "recipes" / "valle_dur.yaml", [*args, f"init_from={tmp_path / 'missing'}"])
