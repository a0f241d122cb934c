"""The trainer: recipes, atomic checkpoints, and kill -9 + resume == an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.codec import Codec
from codeclm.data import AudioRecord, write_manifest
from codeclm.errors import ConfigError
from codeclm.training import checkpoint as ckpt
from codeclm.training.config import load_recipe
from codeclm.training.trainer import EpochBatches, ModelEMA, lr_lambda
from conftest import kill_after_step

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "codec_tiny.yaml"
# small enough for a few seconds per run on 2 cores; the discriminator joins at step 3
FAST = ["data.segment_seconds=0.25", "data.batch_size=2", "data.valid_items=2", "codec.disc_start_step=3",
        "log_every=1", "valid_every=3", "ckpt_every=2", "keep_last=2", "optim.schedule=cosine",
        "optim.warmup_steps=2", "ema_decay=0.9"]


# -- recipes ---------------------------------------------------------------------------------------
def test_recipe_overrides_and_types():
    cfg = load_recipe(TINY, ["out_dir=runs/x", "max_steps=7", "seed=3", "optim.lr=1e-3", "model.ratios=[2,4,4]"])
    assert (cfg.out_dir, cfg.max_steps, cfg.seed, cfg.optim.lr) == ("runs/x", 7, 3, 1e-3)
    assert cfg.task == "codec" and cfg.model.ratios == [2, 4, 4] and cfg.model.n_filters == 4
    for recipe in ("codec_speech", "codec_general"):
        cfg = load_recipe(REPO / "recipes" / f"{recipe}.yaml")
        assert cfg.model.sample_rate == 24000 and cfg.model.channels == 1 and cfg.model.bins == 1024
        assert cfg.model.target_bandwidths == [1.5, 3.0, 6.0, 12.0] and cfg.model.frame_rate in (50, 75)
    cfg = load_recipe(REPO / "recipes" / "lm_music_frame.yaml")  # the music LM on the frame codec's tokens
    assert (cfg.model.n_q, cfg.lm.codec, cfg.mixed_precision) == (6, "checkpoints/codec_v1", "auto")
    assert cfg.lm.conditions == {"melody": {"fuse": "sum"}}
    cfg = load_recipe(REPO / "recipes" / "lm_music_attr.yaml")  # checkpoints/music: + the caption's attributes
    assert cfg.lm.conditions["attributes"] == {"type": "caption_attributes", "fuse": "prepend", "source": "text",
                                               "options": {"dim": cfg.model.dim}}


@pytest.mark.parametrize("overrides, expected", [
    (["optim.lrr=1"], "unknown key 'optim.lrr' on the command line; valid keys under 'optim': lr, betas"),
    (["bogus=1"], "unknown key 'bogus' on the command line; valid keys: task, out_dir, seed, max_steps"),
    (["model.filters=8"], "valid keys under 'model': name, sample_rate"),
    (["max_steps=abc"], "max_steps"),
    (["max_steps=0"], "max_steps"),
    (["model.bins=100"], "bins must be a power of two"),
    (["task=bogus"], "unknown task 'bogus'"),
    (["mixed_precision=fp8"], "mixed_precision"),
    (["codec.phase_weight=1", "codec.phase_windows=[8]"], "codec.phase_windows must be STFT window sizes >= 16, got [8]"),
    (["codec.stft_weight=1", "codec.stft_windows=[]"], "codec.stft_windows must be STFT window sizes >= 16, got []"),
    (["codec.phase_weight=-1"], "codec loss weights must be >= 0"),
    (["codec.disc_n_ffts=[]"], "the adversary needs codec.disc_n_ffts or codec.disc_periods"),
    (["codec.disc_periods=[2,0]"], "codec.disc_periods must be whole periods >= 1"),
    ([f"init_from={Path(__file__).resolve().parents[1] / 'checkpoints' / 'codec'}"],
     "a codec run starts from a codec folder with codec.init_from"),
    (["init_from=/nonexistent/model"], "init_from: /nonexistent/model: no such model folder"),
])
def test_recipe_errors_are_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "data_dir: nowhere\n")
    with pytest.raises(ConfigError, match=r"unknown key 'data_dir' in .*bad.yaml; valid keys: task, out_dir"):
        load_recipe(bad)


def test_train_py_exits_2_on_config_error(capsys):
    sys.path.insert(0, str(REPO))
    try:
        import train as train_py
    finally:
        sys.path.remove(str(REPO))
    assert train_py.main([str(TINY), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: unknown key 'optim.lrr'") and "\n" not in err


# -- pieces ----------------------------------------------------------------------------------------
def test_epoch_batches_shard_and_skip():
    ranks = [list(EpochBatches(22, 3, r, 2, seed=5, epoch=1)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # 22 // (3 * 2) global batches, the rest dropped
    flat = [i for batches in ranks for b in batches for i in b]
    assert len(set(flat)) == 18 and all(len(b) == 3 for b in ranks[0])
    assert list(EpochBatches(22, 3, 1, 2, seed=5, epoch=1, start=2)) == ranks[1][2:]
    assert list(EpochBatches(22, 3, 0, 2, seed=5, epoch=2)) != ranks[0]  # a new order each epoch


def test_lr_schedule_and_ema():
    cfg = load_recipe(TINY, ["max_steps=10", "optim.schedule=cosine", "optim.warmup_steps=2", "optim.min_lr_ratio=0.1"])
    f = lr_lambda(cfg)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0] and f(10) == pytest.approx(0.1) and f(6) == pytest.approx(0.55)
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, 0.5)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.copy_of(model).weight, before + 1.0)


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    acc = _accelerator()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    first = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt.save_checkpoint(acc, tmp_path, ckpt.Position(1, 0, 1), {"m": model}, {"opt": opt.state_dict()})
    with torch.no_grad():
        model.weight.add_(1.0)

    def broken(*args, **kwargs):  # dies half-way through writing the checkpoint
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(acc, tmp_path, ckpt.Position(2, 0, 2), {"m": model}, {"opt": opt.state_dict()})
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000001" and not (root / "step_000002").exists()
    fresh = torch.nn.Linear(3, 2)
    pos, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), acc, {"m": fresh})
    assert pos == ckpt.Position(1, 0, 1) and all(torch.equal(fresh.state_dict()[k], v) for k, v in first.items())
    assert state["opt"]["state"][0]["step"] == 1
    monkeypatch.undo()  # the next save works and clears the half-written folder
    ckpt.save_checkpoint(acc, tmp_path, ckpt.Position(2, 0, 2), {"m": model}, {}, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002"]
    (root / "latest").write_text("step_999999\n")  # a dangling pointer falls back to the newest folder
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000002"


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# -- end to end ------------------------------------------------------------------------------------
def _tiny_manifests(folder: Path) -> tuple[Path, Path]:
    """Six 0.6 s training WAVs at 16 kHz (the dataset resamples to 24 kHz) and two validation WAVs."""
    rng = np.random.default_rng(0)
    t = np.arange(int(0.6 * 16000)) / 16000
    records = []
    for i in range(8):
        wav = 0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)
        path = folder / f"clip{i}.wav"
        sf.write(path, wav.astype(np.float32), 16000)
        records.append(AudioRecord(str(path), 0.6, 16000, 1))
    return write_manifest(records[:6], folder / "train.jsonl"), write_manifest(records[6:], folder / "valid.jsonl")


def _train_cmd(out_dir: Path, data_args: list[str], steps: int) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), str(TINY), f"out_dir={out_dir}", f"max_steps={steps}",
            "seed=1", *FAST, *data_args]


def _metrics(out_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("samples_per_s")} for r in rows]


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    train_m, valid_m = _tiny_manifests(tmp_path)
    data = [f"data.train_manifest={train_m}", f"data.valid_manifest={valid_m}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps, kill_after = 8, 5

    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, data, steps), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    kill_after_step(_train_cmd(killed, data, steps), killed, kill_after, env)
    assert ckpt.latest_checkpoint(killed) is not None
    assert ckpt.Position(**{k: json.loads((ckpt.latest_checkpoint(killed) / "meta.json").read_text())[k]
                            for k in ("step", "epoch", "batch")}).step < steps
    resumed = subprocess.run(_train_cmd(killed, data, steps), env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr

    a, b = _metrics(straight), _metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a[-1]["step"] == steps
    assert any("train/disc" in r for r in a) and any("valid/mel" in r for r in a)
    assert a == b  # every loss, learning rate and validation metric, bit for bit
    assert (straight / "state_hash.rank0.txt").read_text() == (killed / "state_hash.rank0.txt").read_text()

    # what an uninterrupted run leaves behind
    codec = Codec.from_pretrained(straight / "model")
    assert codec.config.name == "codeclm-codec-tiny"
    assert codec.encode(torch.zeros(1, 1, 2400)).shape == (1, codec.num_codebooks, 75)
    from codeclm.training.trainer import tensorboard_available

    if tensorboard_available():  # the train extra
        assert list((straight / "tb").rglob("events.out.tfevents.*"))
    else:  # a base install: clips as WAV files
        assert list((straight / "audio").glob("*.wav"))
    kept = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert kept == ["latest", "step_000006", "step_000008"]


# -- recipe names, YAML booleans (issue 11) ---------------------------------------------------------
def test_recipe_by_name_and_mixed_precision_no(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a name is found in the checkout's recipes/ from anywhere
    for name in ("codec_tiny", "codec_tiny.yaml", str(TINY), str(TINY)[: -len(".yaml")]):
        assert load_recipe(name).model.name == "codeclm-codec-tiny"
    with pytest.raises(ConfigError, match=r"nope: recipe file not found; recipes in .*codec_tiny"):
        load_recipe("nope")
    # `no` is a YAML boolean; on the command line and in a file alike it means fp32
    assert load_recipe("codec_tiny", ["mixed_precision=no"]).mixed_precision == "no"
    assert load_recipe("codec_tiny", ["mixed_precision=auto"]).mixed_precision == "auto"
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(TINY.read_text() + "mixed_precision: no\n")
    assert load_recipe(recipe).mixed_precision == "no"
    assert load_recipe(recipe, ["mixed_precision=bf16"]).mixed_precision == "bf16"
    sys.path.insert(0, str(REPO))
    try:
        import train as train_py
    finally:
        sys.path.remove(str(REPO))
    assert train_py.main(["nope", "max_steps=1"]) == 2
    assert "train.py: error: nope: recipe file not found" in capsys.readouterr().err


def test_train_py_takes_a_recipe_name(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "codec_tiny", f"out_dir={out}", "max_steps=1",
                          "mixed_precision=no", "data.segment_seconds=0.25", "data.batch_size=2",
                          "data.synthetic_items=2", "data.valid_items=0", "codec.adv_weight=0", "codec.feat_weight=0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "model" / "config.json").is_file()


# -- the LR schedule (issue 11) --------------------------------------------------------------------
def _lr_run(tmp_path, overrides: list[str]) -> tuple[list[dict], list[tuple[int, float]], list[str]]:
    """Train in this process; returns the metrics rows, (parameter count, lr) of every inner
    optimizer step in order, and the warnings raised."""
    import warnings

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from codeclm.training.trainer import train

    steps = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: steps.append((sum(p.numel() for g in opt.param_groups for p in g["params"]),
                                                opt.param_groups[0]["lr"])))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(load_recipe(TINY, [f"out_dir={tmp_path / 'run'}", "data.segment_seconds=0.25", "data.batch_size=2",
                                     "data.valid_items=0", "log_every=1", "valid_every=0", "ckpt_every=0",
                                     "optim.schedule=cosine", "optim.warmup_steps=2", "optim.lr=1e-3",
                                     "mixed_precision=no", *overrides]))
    finally:
        handle.remove()
    return _metrics(tmp_path / "run"), steps, [str(w.message) for w in caught]


@pytest.mark.parametrize("case", ["late_discriminator", "grad_accum"])
def test_lr_is_exact_per_step_without_scheduler_warning(tmp_path, case):
    """The update of step s uses lr * lr_lambda(s - 1), for every optimizer, also a discriminator
    that starts late (it used to print "Detected call of lr_scheduler.step() before optimizer.step()")
    or skips steps, and with gradient accumulation (one optimizer step per trainer step)."""
    max_steps = 6
    if case == "late_discriminator":
        extra = ["codec.disc_start_step=2", "codec.disc_prob=0.5"]
    else:
        extra = ["grad_accum=2", "codec.adv_weight=0", "codec.feat_weight=0"]
    rows, steps, caught = _lr_run(tmp_path, [f"max_steps={max_steps}", *extra])
    assert not [w for w in caught if "lr_scheduler" in w], caught
    f = lr_lambda(load_recipe(TINY, [f"max_steps={max_steps}", "optim.schedule=cosine", "optim.warmup_steps=2"]))
    expect = {s: 1e-3 * f(s - 1) for s in range(1, max_steps + 1)}
    assert [r["step"] for r in rows] == list(expect)
    for r in rows:  # the logged LR is the one the step used
        assert r["lr/generator"] == pytest.approx(expect[r["step"]], rel=1e-12)
        if case == "late_discriminator":
            assert r["lr/discriminator"] == pytest.approx(expect[r["step"]], rel=1e-12)
    sizes = sorted({n for n, _ in steps})
    generator = max(sizes)  # the generator has more parameters than the tiny discriminator
    gen_lrs = [lr for n, lr in steps if n == generator]
    assert gen_lrs == pytest.approx([expect[s] for s in expect], rel=1e-12)
    if case == "late_discriminator":
        disc_steps = [r["step"] for r in rows if "train/disc" in r]
        assert disc_steps and min(disc_steps) == 3 and len(disc_steps) < max_steps - 2 + 1
        disc_lrs = [lr for n, lr in steps if n != generator]
        assert disc_lrs == pytest.approx([expect[s] for s in disc_steps], rel=1e-12)


# -- the discriminator and the generator pass (issue 11) ---------------------------------------------
@pytest.mark.parametrize("balancer", [True, False])
def test_generator_pass_leaves_no_discriminator_gradient(balancer):
    """After a step the discriminator holds no gradient, and its next update equals one computed
    from its own loss alone (the generator's adversarial loss used to leak into it with balancer=false)."""
    import copy

    from codeclm.training.codec_task import Task
    from codeclm.training.losses import hinge_discriminator_loss

    torch.manual_seed(0)
    cfg = load_recipe(TINY, ["data.segment_seconds=0.25", "data.batch_size=2", "data.valid_items=0",
                             "codec.disc_start_step=0", f"codec.balancer={str(balancer).lower()}", "mixed_precision=no"])
    acc = _accelerator()
    task = Task(cfg, acc)
    task.prepare(acc)
    disc = task.models["discriminator"]
    batches = [task.collate([task.train_set[i] for i in (2 * k, 2 * k + 1)]) for k in range(2)]

    logs = task.train_step(batches[0], 0)
    assert "disc" in logs and "adv" in logs
    assert all(p.grad is None or not p.grad.any() for p in disc.parameters())

    # reference: the discriminator update of the next step from its own loss only
    ref = copy.deepcopy(disc)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    ref_opt.load_state_dict(copy.deepcopy(task.optimizers["discriminator"].state_dict()))
    seen = {}
    step = task._discriminator_step

    def spy(x, fake):
        seen["x"], seen["fake"] = x.clone(), fake.clone()
        return step(x, fake)

    task._discriminator_step = spy
    task.train_step(batches[1], 1)
    logits, _ = ref(torch.cat([seen["x"], seen["fake"]]))
    b = seen["x"].shape[0]
    hinge_discriminator_loss([z[:b] for z in logits], [z[b:] for z in logits]).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.optim.grad_clip)
    ref_opt.step()
    for (name, p), q in zip(disc.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-7), name
    assert all(p.grad is None or not p.grad.any() for p in disc.parameters())


# -- mixed precision on CPU (issue 11) --------------------------------------------------------------
def test_cpu_precision_choice(monkeypatch):
    from codeclm.training import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.resolve_precision("auto", has_gpu=False)[0] == "no"  # emulated bf16 is slower here
    mixed, note = trainer.resolve_precision("bf16", has_gpu=False)
    assert mixed == "bf16" and "much slower" in note
    assert trainer.resolve_precision("fp16", has_gpu=False)[0] == "bf16"
    assert trainer.resolve_precision("no", has_gpu=False) == ("no", None)
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.resolve_precision("auto", has_gpu=False) == ("bf16", None)
    assert trainer.resolve_precision("bf16", has_gpu=False) == ("bf16", None)


def test_bf16_on_cpu_is_really_used(tmp_path, request):
    """mixed_precision=bf16 on a CPU trains the codec's convolutions in bf16 (no silent fp32
    fallback) while the quantizer and the optimizer state stay fp32."""
    from accelerate.state import AcceleratorState

    from codeclm.training.codec_task import Task
    from codeclm.training.trainer import make_accelerator

    AcceleratorState._reset_state(True)  # an earlier test's Accelerator may have fixed another precision
    request.addfinalizer(lambda: AcceleratorState._reset_state(True))
    cfg = load_recipe(TINY, ["data.segment_seconds=0.25", "data.batch_size=2", "data.valid_items=0",
                             "codec.adv_weight=0", "codec.feat_weight=0", "mixed_precision=bf16",
                             f"out_dir={tmp_path}"])
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator state per process: start afresh
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    acc, _ = make_accelerator(cfg, tmp_path)
    assert acc.mixed_precision == "bf16"
    task = Task(cfg, acc)
    task.prepare(acc)
    seen = {}
    conv = next(m for m in task.codec.encoder.modules() if isinstance(m, torch.nn.Conv1d))
    conv.register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))
    task.codec.quantizer.register_forward_hook(lambda m, i, o: seen.update(commit=o.commitment_loss.dtype))
    logs = task.train_step(task.collate([task.train_set[0], task.train_set[1]]), 0)
    assert seen["conv"] == torch.bfloat16 and seen["commit"] == torch.float32  # the quantizer computes in fp32
    assert all(b.dtype == torch.float32 for b in task.codec.quantizer.buffers() if b.is_floating_point())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())
    state = task.optimizers["generator"].state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())


def test_step_schedule_reads_and_writes_lambdalr_state():
    """Checkpoints of runs made before StepSchedule hold LambdaLR states: they resume at the same LR."""
    from torch.optim.lr_scheduler import LambdaLR

    from codeclm.training.trainer import StepSchedule

    cfg = load_recipe(TINY, ["max_steps=10", "optim.schedule=cosine", "optim.warmup_steps=3"])
    f = lr_lambda(cfg)
    old_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    old = LambdaLR(old_opt, f)
    for _ in range(4):
        old_opt.step()
        old.step()
    new_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    new = StepSchedule(new_opt, f)
    new_opt.load_state_dict(old_opt.state_dict())
    new.load_state_dict(old.state_dict())
    assert new.last_epoch == 4 and new_opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"] == 1e-3 * f(4)
    back_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    back = LambdaLR(back_opt, f)
    back.load_state_dict(new.state_dict())
    back_opt.step()
    back.step()
    assert back.get_last_lr() == [1e-3 * f(5)]
