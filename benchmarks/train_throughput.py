"""Training throughput (samples/s) of the codec, token-LM and VALL-E recipes, fp32 vs bf16, with
1 and 2 processes (DDP), as one JSON line that names the CPU it ran on.

    python benchmarks/train_throughput.py                       # all three recipes, fp32 + bf16, 1 + 2 processes
    python benchmarks/train_throughput.py --tasks codec --precisions no --processes 1 2 4 --steps 20

Each configuration is a fresh ``accelerate launch`` of ``train.py`` on a "tiny-ish" size (see
``TASKS``; add recipe overrides after ``--``). The LM and VALL-E runs train on a synthetic token
cache made here (random codes; VALL-E's transcripts are phonemised by espeak-ng). Weak scaling:
the batch is per process, so 2 processes train on twice the samples per step. Samples/s is the
trainer's (``train_summary.json``): over the steps after the first three, without checkpoints
and validation. Threads per process: ``--threads`` (default: the CPU cores divided by the process
count; on a machine shared with other jobs ``--threads 1`` avoids OpenMP oversubscription).

bf16 on a CPU is fast only with native bf16 instructions (AMX-BF16 or AVX512-BF16; the JSON line
says whether this CPU has them). Elsewhere oneDNN emulates it and bf16 autocast is much slower
than fp32, which is why ``mixed_precision: auto`` trains in fp32 there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["the cat sat on the mat", "a bright morning in spring", "seven green bottles on the wall",
             "please call me tomorrow", "the quick brown fox jumps over the lazy dog"]

# recipe + overrides of a "tiny-ish" size per task; {cache} is the synthetic token cache
TASKS = {
    "codec": ("codec_tiny", ["data.segment_seconds=0.5", "data.batch_size=4", "data.synthetic_items=64",
                             "codec.disc_start_step=0"]),
    "lm": ("lm_music_tiny", ["data.token_cache={cache}", "data.segment_frames=128", "data.batch_size=4",
                             "model.card=256", "model.dim=128", "model.num_heads=4", "model.num_layers=4",
                             "text.dim=128", "text.num_heads=4"]),
    "valle": ("valle_tiny", ["data.token_cache={cache}", "data.batch_size=4", "model.card=256", "model.dim=128",
                             "model.num_heads=4", "model.ar_layers=3", "model.nar_layers=3", "valle.languages=[en]"]),
}


def cpu_info() -> dict:
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "flags": {f: f in flags for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2")}}


def make_cache(folder: Path, text: bool, n: int = 64, frames: int = 200, n_q: int = 2, card: int = 256) -> Path:
    """A token cache of learnable codes (each caption / transcript fixes a short repeating pattern,
    10% of the tokens random): captions for the LM, English transcripts for VALL-E."""
    import torch
    from safetensors.torch import save_file

    from codeclm.data.tokens import FORMAT, INDEX, META, VERSION, shard_name

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "codec": {"name": "bench", "sha256": "0" * 64}, "n_q": n_q,
            "bandwidth": None, "frame_rate": 50, "bins": card, "sample_rate": 24000, "channels": 1,
            "hop_length": 480, "dtype": "int16"}
    (folder / META).write_text(json.dumps(meta))
    g = torch.Generator().manual_seed(0)
    t = torch.arange(frames)
    rows = []
    for i in range(n):
        s = i % len(SENTENCES) if text else i % 7
        pattern = torch.stack([(3 * s + 5 * (t % 4) + 11 * k) % card for k in range(n_q)])
        noise = torch.rand(n_q, frames, generator=g) < 0.1
        rows.append(torch.where(noise, torch.randint(0, card, (n_q, frames), generator=g), pattern))
    codes = torch.cat(rows, 1).to(torch.int16)
    save_file({"codes": codes}, str(folder / shard_name(0)))
    lines = [json.dumps({"path": f"/bench/{i}.wav", "duration": frames / 50,
                         "text": SENTENCES[i % len(SENTENCES)] if text else None,
                         "caption": None if text else f"calm piano piece number {i % 7}", "speaker": f"s{i % 4}",
                         "language": "en" if text else None, "shard": 0, "offset": i * frames, "n_frames": frames})
             for i in range(n)]
    (folder / INDEX).write_text("".join(line + "\n" for line in lines))
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(task: str, precision: str, processes: int, steps: int, threads: int, caches: dict, extra: list[str]) -> dict:
    recipe, overrides = TASKS[task]
    overrides = [o.format(cache=caches.get(task, "")) for o in overrides]
    with tempfile.TemporaryDirectory(prefix="codeclm-bench-") as tmp:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(processes)]
        launch += ["--multi_gpu", "--main_process_port", str(_free_port())] if processes > 1 else []
        cmd = launch + [str(REPO / "train.py"), recipe, f"out_dir={tmp}/run", f"max_steps={steps}",
                        f"mixed_precision={precision}", "valid_every=0", "ckpt_every=0", f"log_every={steps}",
                        "data.valid_items=0", *overrides, *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"train_throughput.py: {task} {precision} x{processes} failed:\n{done.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "run" / "train_summary.json").read_text())
        if precision == "bf16" and "bf16" not in done.stderr and "bf16" not in (Path(tmp) / "run" / "recipe.yaml").read_text():
            sys.exit("train_throughput.py: the bf16 run did not train in bf16")
        return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8, help="steps per run (the first three are not timed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per process (default: the CPU cores divided by the process count)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (key=value) after --, for every run")
    args = parser.parse_args()
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = {n: args.threads or max(1, cores // n) for n in args.processes}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="codeclm-bench-cache-") as tmp:
        caches = {}
        if "lm" in args.tasks:
            caches["lm"] = make_cache(Path(tmp) / "lm", text=False)
        if "valle" in args.tasks:
            caches["valle"] = make_cache(Path(tmp) / "valle", text=True)
        for task in args.tasks:
            for precision in args.precisions:
                for n in args.processes:
                    summary = run(task, precision, n, args.steps, threads[n], caches, args.overrides)
                    results.setdefault(task, {}).setdefault(precision, {})[str(n)] = {
                        "samples_per_s": round(summary["samples_per_s"], 3),
                        "samples_per_step": summary["samples_per_step"]}
    speedup = {task: {n: round(r["bf16"][n]["samples_per_s"] / r["no"][n]["samples_per_s"], 3) for n in r["no"]}
               for task, r in results.items() if "bf16" in r and "no" in r}
    print(json.dumps({"benchmark": "train_throughput", **cpu_info(), "cpu_cores": cores, "torch": torch.__version__,
                      "threads_per_process": {str(n): t for n, t in threads.items()}, "steps": args.steps,
                      "overrides": args.overrides, "samples_per_s": results, "bf16_over_fp32": speedup}))


if __name__ == "__main__":
    main()
