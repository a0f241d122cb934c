"""Loss against wall-clock time, fp32 vs bf16, for the codec and token-LM tiny recipes: one JSON line.

    python benchmarks/precision_curves.py                      # 120 s per run, codec + lm
    python benchmarks/precision_curves.py --seconds 300 --tasks codec -- model.n_filters=8

Each (task, precision) is a fresh ``train.py`` run in one process (``--threads`` threads) stopped
after ``--seconds`` of wall-clock time (start-up included, as a user pays it); the main loss
(codec: ``train/mel``, LM: ``train/ce``) is read from ``metrics.jsonl`` as it is written. The line
gives, per run, the steps reached and the mean loss of the last ``--window`` logged steps, and
the loss at a few common times, so "quality per CPU-second" of both precisions can be compared.
The LM trains on the synthetic token cache of ``train_throughput.py`` (a short pattern per
caption, 10% random tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import REPO, TASKS, cpu_info, make_cache  # noqa: E402

LOSS = {"codec": "train/mel", "lm": "train/ce"}


def curve(task: str, precision: str, seconds: float, threads: int, cache: Path | None, extra: list[str]) -> list:
    recipe, overrides = TASKS[task]
    overrides = [o.format(cache=cache or "") for o in overrides]
    points = []
    with tempfile.TemporaryDirectory(prefix="codeclm-curve-") as tmp:
        metrics = Path(tmp) / "run" / "metrics.jsonl"
        cmd = [sys.executable, str(REPO / "train.py"), recipe, f"out_dir={tmp}/run", "max_steps=1000000",
               f"mixed_precision={precision}", "valid_every=0", "ckpt_every=0", "log_every=1", "data.valid_items=0",
               *overrides, *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = 0
        try:
            while time.perf_counter() - start < seconds and proc.poll() is None:
                time.sleep(0.2)
                if metrics.is_file():
                    lines = metrics.read_text().splitlines()
                    now = time.perf_counter() - start
                    for line in lines[seen:]:
                        try:
                            row = json.loads(line)
                        except ValueError:
                            break
                        if LOSS[task] in row:
                            points.append((round(now, 2), row["step"], row[LOSS[task]]))
                        seen += 1
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return points


def summary(points: list, window: int, times: list[float]) -> dict:
    losses = [p[2] for p in points]

    def at(t: float):
        before = [p for p in points if p[0] <= t]
        if not before:
            return None
        tail = [p[2] for p in before[-window:]]
        return round(sum(tail) / len(tail), 4)

    return {"steps": points[-1][1] if points else 0,
            "first_loss": round(losses[0], 4) if losses else None,
            "final_loss": round(sum(losses[-window:]) / len(losses[-window:]), 4) if losses else None,
            "loss_at_s": {str(int(t)): at(t) for t in times}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["codec", "lm"], choices=list(LOSS))
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=5, help="logged steps averaged for a loss value")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (key=value) after --")
    args = parser.parse_args()
    times = [args.seconds * f for f in (0.25, 0.5, 0.75, 1.0)]
    out = {}
    with tempfile.TemporaryDirectory(prefix="codeclm-curve-cache-") as tmp:
        cache = make_cache(Path(tmp) / "lm", text=False) if "lm" in args.tasks else None
        for task in args.tasks:
            for precision in args.precisions:
                points = curve(task, precision, args.seconds, args.threads, cache if task == "lm" else None,
                               args.overrides)
                out.setdefault(task, {})[precision] = summary(points, args.window, times)
    print(json.dumps({"benchmark": "precision_curves", **cpu_info(), "seconds": args.seconds,
                      "threads": args.threads, "loss": {t: LOSS[t] for t in args.tasks}, "runs": out}))


if __name__ == "__main__":
    main()
