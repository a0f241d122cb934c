"""Two CPU processes (DDP over gloo) train codec_tiny in lockstep, the loss goes down, resume is exact."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           str(REPO / "train.py"), str(REPO / "recipes" / "codec_tiny.yaml"), f"out_dir={out}", "max_steps=30",
           # one global batch repeated: 4 items = 2 per process; no adversary, every codebook
           "data.synthetic_items=4", "data.batch_size=2", "data.segment_seconds=0.25", "data.valid_items=2",
           "codec.adv_weight=0", "codec.feat_weight=0", "codec.quantizer_dropout=false", "optim.lr=1e-3",
           "ema_decay=0.9", "log_every=1", "valid_every=10", "ckpt_every=10", "keep_last=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 1 thread per process: no oversubscription on small hosts
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_two_processes_stay_identical_learn_and_resume(tmp_path):
    out = tmp_path / "run"
    _launch(out)

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["samples_per_step"] == 4
    hashes = [(out / f"state_hash.rank{r}.txt").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]  # generator weights and codebooks identical on both ranks

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    mel = [r["train/mel"] for r in rows if "train/mel" in r]
    l1 = [r["train/l1"] for r in rows if "train/l1" in r]
    assert len(mel) == 30
    assert sum(mel[-10:]) < sum(mel[:10]) and sum(l1[-10:]) < sum(l1[:10])

    # as if both processes had been killed after the step-20 checkpoint: resume, get the same run
    metrics = (out / "metrics.jsonl").read_text()
    shutil.rmtree(out / "checkpoints" / "step_000030")
    (out / "checkpoints" / "latest").write_text("step_000020\n")
    assert "resuming from" in _launch(out).stderr
    assert (out / "metrics.jsonl").read_text().count("\n") == metrics.count("\n")
    strip = (lambda text: [{k: v for k, v in json.loads(line).items() if not k.endswith("samples_per_s")}
                           for line in text.splitlines()])
    assert strip((out / "metrics.jsonl").read_text()) == strip(metrics)
    assert [(out / f"state_hash.rank{r}.txt").read_text() for r in range(2)] == hashes
