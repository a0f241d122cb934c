"""Two CPU processes (torchrun, gloo) split a prompts file and write exactly the one-process files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from codeclm.pipelines.sharding import job_seed, process_shard, shard_range

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["calm piano", "loud rock guitar", "jazz with fast drums", "soft synth bass"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate(launcher: list[str], prompts: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    cmd = launcher + [str(REPO / "generate.py"), "music", "--prompts-file", str(prompts), "--out-dir", str(out),
                      "--model", str(model), "--duration", "0.05", "--seed", "7", "--top-k", "20", "--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_shard_range_covers_everything_once():
    for n in range(9):
        for world in range(1, 5):
            got = [i for r in range(world) for i in shard_range(n, r, world)]
            assert got == list(range(n))
    assert list(shard_range(5, 0, 2)) == [0, 1, 2] and list(shard_range(5, 1, 2)) == [3, 4]
    assert job_seed(7, 3) == 10 and job_seed(None, 2) == 2


def test_single_process_takes_all_jobs(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    shard = process_shard(["a", "b", "c"], "cpu")
    assert shard.items == [(0, "a"), (1, "b"), (2, "c")] and shard.world == 1 and shard.is_main
    shard.close()


def test_two_processes_write_the_same_files(tmp_path):
    from test_generate_cli import build_tiny_music_folder

    model = build_tiny_music_folder(tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    _generate([sys.executable], prompts, one, model)
    run = _generate([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                     "--master_port", str(_free_port())], prompts, two, model)
    assert "[process 0/2]" in run.stderr and "[process 1/2]" in run.stderr
    names = sorted(p.name for p in one.iterdir())
    assert len(names) == 4 and names == sorted(p.name for p in two.iterdir())
    for name in names:
        a, sr_a = sf.read(str(one / name), dtype="float32", always_2d=True)
        b, sr_b = sf.read(str(two / name), dtype="float32", always_2d=True)
        assert sr_a == sr_b and a.shape == b.shape and np.array_equal(a, b), name
    # different prompts (and seeds) give different audio
    first = sf.read(str(one / names[0]), dtype="float32")[0]
    assert not np.array_equal(first, sf.read(str(one / names[1]), dtype="float32")[0])
