"""Training throughput of codec_tiny with 1 and with 2 processes (DDP), as one JSON line.

    python benchmarks/train_throughput.py                 # 30 steps, batch 4 per process, 1 s segments
    python benchmarks/train_throughput.py --steps 50 --processes 1 2 4 -- data.batch_size=8

Each configuration is a fresh ``accelerate launch`` of ``train.py`` (weak scaling: the batch is per
process, so 2 processes train on twice the samples per step). The CPU cores are split evenly
between processes (OMP_NUM_THREADS) unless ``--threads`` says otherwise; on a machine shared with
other jobs, ``--threads 1`` avoids OpenMP oversubscription, which can slow a run tenfold. Samples/s is measured by the trainer over the steps after the
first two (k-means initialisation, warm caches) and excludes checkpoints and validation.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, steps: int, recipe: Path, extra: list[str], threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="codeclm-bench-") as tmp:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(processes)]
        launch += ["--multi_gpu", "--main_process_port", str(_free_port())] if processes > 1 else []
        cmd = launch + [str(REPO / "train.py"), str(recipe), f"out_dir={tmp}/run", f"max_steps={steps}",
                        "valid_every=0", "ckpt_every=0", f"log_every={steps}", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"train_throughput.py: {processes} process(es) failed:\n{done.stderr[-3000:]}")
        return json.loads((Path(tmp) / "run" / "train_summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "codec_tiny.yaml")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per process (default: the CPU cores divided by the process count)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (key=value) after --")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = {n: args.threads or max(1, cores // n) for n in args.processes}
    results = {n: run(n, args.steps, args.recipe, args.overrides, threads[n]) for n in args.processes}
    base = results[args.processes[0]]["samples_per_s"]
    print(json.dumps({
        "benchmark": "train_throughput", "recipe": args.recipe.stem, "steps": args.steps, "cpu_cores": cores,
        "threads_per_process": {str(n): t for n, t in threads.items()}, "overrides": args.overrides,
        "samples_per_step": {str(n): r["samples_per_step"] for n, r in results.items()},
        "samples_per_s": {str(n): round(r["samples_per_s"], 3) for n, r in results.items()},
        "speedup": {str(n): round(r["samples_per_s"] / base, 3) for n, r in results.items()},
    }))


if __name__ == "__main__":
    main()
