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


@pytest.mark.parametrize("overrides, expected", [
    (["optim.lrr=1"], "unknown key 'optim.lrr' on the command line; valid keys under 'optim': lr, betas"),
    (["bogus=1"], "unknown key 'bogus' on the command line; valid keys: task, out_dir, seed, max_steps"),
    (["model.filters=8"], "valid keys under 'model': name, sample_rate"),
    (["max_steps=abc"], "max_steps"),
    (["max_steps=0"], "max_steps"),
    (["model.bins=100"], "bins must be a power of two"),
    (["task=bogus"], "unknown task 'bogus'"),
    (["mixed_precision=fp8"], "mixed_precision"),
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
    assert list((straight / "tb").rglob("events.out.tfevents.*"))
    kept = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert kept == ["latest", "step_000006", "step_000008"]
