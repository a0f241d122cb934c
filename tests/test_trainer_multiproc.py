"""Several CPU processes (DDP over gloo): codec, LM and VALL-E training stay in lockstep, learn and
resume exactly; training works without TensorBoard; two "nodes" on this host train as one node
with two processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 1 thread per process: no oversubscription on small hosts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate(processes: int, script: Path = TRAIN) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--multi_gpu", "--main_process_port", str(_free_port())] if processes > 1 else []
    return cmd + [str(script)]


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("samples_per_s")} for r in rows]


def _hashes(out: Path, world: int = 2) -> list[str]:
    return [(out / f"state_hash.rank{r}.txt").read_text() for r in range(world)]


def _lockstep_learns_and_resumes(out: Path, launch, losses: list[str], steps: int, resume_step: int) -> None:
    """Run ``launch()`` (2 processes); identical states on both ranks, every loss in ``losses`` falls
    (last third < first third), and a resume from ``resume_step`` gives the same metrics and states."""
    launch()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == steps
    hashes = _hashes(out)
    assert hashes[0] == hashes[1]  # every model identical on both ranks
    rows = _rows(out)
    third = steps // 3
    for key in losses:
        values = [r[f"train/{key}"] for r in rows if f"train/{key}" in r]
        assert len(values) == steps, key
        assert sum(values[-third:]) < sum(values[:third]), (key, values)

    # as if both processes had been killed after the resume_step checkpoint: resume, get the same run
    metrics = (out / "metrics.jsonl").read_text()
    shutil.rmtree(out / "checkpoints" / f"step_{steps:06d}")
    (out / "checkpoints" / "latest").write_text(f"step_{resume_step:06d}\n")
    assert "resuming from" in launch().stderr
    assert _strip(_rows(out)) == _strip([json.loads(line) for line in metrics.splitlines()])
    assert _hashes(out) == hashes


# -- codec ------------------------------------------------------------------------------------------
CODEC_FAST = ["data.synthetic_items=4", "data.batch_size=2", "data.segment_seconds=0.25", "data.valid_items=2"]


def test_two_processes_stay_identical_learn_and_resume(tmp_path):
    out = tmp_path / "run"
    # one global batch repeated: 4 items = 2 per process; no adversary, every codebook
    args = [str(REPO / "recipes" / "codec_tiny.yaml"), f"out_dir={out}", "max_steps=30", *CODEC_FAST,
            "codec.adv_weight=0", "codec.feat_weight=0", "codec.quantizer_dropout=false", "optim.lr=1e-3",
            "ema_decay=0.9", "log_every=1", "valid_every=10", "ckpt_every=10", "keep_last=2"]
    _lockstep_learns_and_resumes(out, lambda: _run(_accelerate(2) + args), ["mel", "l1"], 30, 20)
    assert json.loads((out / "train_summary.json").read_text())["samples_per_step"] == 4


# -- token LM ---------------------------------------------------------------------------------------
def test_lm_two_processes_stay_identical_learn_and_resume(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lm_training import make_cache

    cache = make_cache(tmp_path / "cache")
    out = tmp_path / "run"
    args = ["lm_music_tiny", f"data.token_cache={cache}", f"out_dir={out}", "max_steps=20", "data.batch_size=2",
            "log_every=1", "valid_every=10", "ckpt_every=10", "keep_last=2", "lm.cond_dropout=0.3", "ema_decay=0.9"]
    _lockstep_learns_and_resumes(out, lambda: _run(_accelerate(2) + args), ["ce"], 20, 10)
    assert any("valid/ce" in r for r in _rows(out))


# -- VALL-E -----------------------------------------------------------------------------------------
SENTENCES = ["the cat sat on the mat", "a bright morning in spring", "seven green bottles on the wall",
             "please call me tomorrow", "the quick brown fox jumps"]


def make_valle_cache(folder: Path, n: int = 24, n_q: int = 2, card: int = 64) -> Path:
    """A token cache of transcribed "speech": each sentence fixes a simple code sequence, so both
    stages can learn it; lengths differ (padding and prompts are exercised)."""
    from codeclm.data.tokens import FORMAT, INDEX, META, VERSION, shard_name

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "codec": {"name": "fake", "sha256": "0" * 64}, "n_q": n_q,
            "bandwidth": None, "frame_rate": 50, "bins": card, "sample_rate": 24000, "channels": 1,
            "hop_length": 480, "dtype": "int16"}
    (folder / META).write_text(json.dumps(meta))
    chunks, lines, offset = [], [], 0
    for i in range(n):
        s = i % len(SENTENCES)
        length = 20 + 4 * s + (i % 3)
        t = torch.arange(length)
        first = (3 * s + t % 4) % card
        codes = torch.stack([(first + 7 * k) % card for k in range(n_q)]).to(torch.int16)
        chunks.append(codes)
        lines.append(json.dumps({"path": f"/fake/{i}.wav", "duration": length / 50, "text": SENTENCES[s],
                                 "caption": None, "speaker": f"spk{i % 2}", "language": "en", "shard": 0,
                                 "offset": offset, "n_frames": length}) + "\n")
        offset += length
    save_file({"codes": torch.cat(chunks, dim=1).contiguous()}, str(folder / shard_name(0)))
    (folder / INDEX).write_text("".join(lines))
    return folder


def test_valle_two_processes_stay_identical_learn_and_resume(tmp_path):
    """The VALL-E losses go through the DDP-wrapped module's forward: gradients are synchronised,
    so both ranks end with the same weights (they drifted apart when the task called ar_loss/nar_loss
    on the unwrapped model)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    cache = make_valle_cache(tmp_path / "cache")
    out = tmp_path / "run"
    args = ["valle_tiny", f"data.token_cache={cache}", f"out_dir={out}", "max_steps=20", "data.batch_size=2",
            "valle.languages=[en]", "log_every=1", "valid_every=10", "ckpt_every=10", "keep_last=2",
            "ema_decay=0.9", "optim.lr=3e-3"]
    _lockstep_learns_and_resumes(out, lambda: _run(_accelerate(2) + args), ["ar_ce", "nar_ce"], 20, 10)
    run_log = (out / "metrics.jsonl").read_text()
    assert "valid/ar_ce" in run_log and (out / "model" / "valle" / "model.safetensors").is_file()


# -- without TensorBoard ----------------------------------------------------------------------------
NO_TENSORBOARD = """import runpy, sys
sys.modules["tensorboard"] = None  # as if the train extra were not installed
sys.modules["tensorboardX"] = None
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.parametrize("processes", [1, 2])
def test_training_without_tensorboard(tmp_path, processes):
    """A base install (no TensorBoard): one line says so, metrics.jsonl and WAV clips are written
    (it used to die at the first validation: 'GeneralTracker' object has no attribute 'add_audio')."""
    wrapper = tmp_path / "train_no_tb.py"
    wrapper.write_text(NO_TENSORBOARD.format(train=str(TRAIN)))
    out = tmp_path / "run"
    cmd = ([sys.executable, str(wrapper)] if processes == 1 else _accelerate(2, wrapper)) + [
        "codec_tiny", f"out_dir={out}", "max_steps=4", *CODEC_FAST, "codec.disc_start_step=2", "log_every=1",
        "valid_every=2", "ckpt_every=0"]
    run = _run(cmd)
    assert "TensorBoard is not installed" in run.stderr and "pip install 'codeclm[train]'" in run.stderr
    rows = _rows(out)
    assert [r["step"] for r in rows if "train/mel" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "valid/mel" in r] == [2, 4]
    clips = sorted(p.name for p in (out / "audio").glob("*.wav"))
    assert "audio_0_original_step2.wav" in clips and "audio_1_reconstruction_step4.wav" in clips
    assert not (out / "tb").exists() and (out / "model" / "config.json").is_file()
    if processes == 2:
        assert _hashes(out)[0] == _hashes(out)[1]


# -- two nodes --------------------------------------------------------------------------------------
def test_two_nodes_equal_one_node_with_two_processes(tmp_path):
    """Two torchrun "nodes" on this host (rendezvous on 127.0.0.1, one process each) end with the
    same metrics and weights as one torchrun node with two processes."""
    args = ["codec_tiny", "max_steps=4", *CODEC_FAST, "codec.disc_start_step=2", "log_every=1", "valid_every=0",
            "ckpt_every=0", "data.valid_items=0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    one = tmp_path / "one_node"
    _run(torchrun + ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                     str(TRAIN), *args, f"out_dir={one}"])
    two = tmp_path / "two_nodes"
    port = str(_free_port())
    nodes = [subprocess.Popen(torchrun + ["--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                                          "--master_addr", "127.0.0.1", "--master_port", port,
                                          str(TRAIN), *args, f"out_dir={two}"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    results = []
    for node in nodes:
        try:
            results.append(node.communicate(timeout=600))
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2
    assert _hashes(two) == _hashes(one) and _hashes(one)[0] == _hashes(one)[1]
    assert _strip(_rows(two)) == _strip(_rows(one))
