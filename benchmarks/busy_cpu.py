"""A codeclm job next to a busy core: how much slower it gets, with codeclm's default threads.

The job (a subprocess each time): encode + decode ``--seconds`` of audio with the shipped codec
(``checkpoints/codec``, the exact path ``compress`` / ``decompress`` run). It runs

* ``alone``: nothing else started by this script;
* ``busy``: next to a process that spins on one core (pinned to CPU 0),

each with codeclm's default thread count (:func:`codeclm.threads.default_threads`: the CPUs not
already kept busy) and with torch's own default (one thread per core, ``torch_default``), best of
``--repeats``. ``slowdown`` = busy / alone wall time with the default threads (goal <= 1.3);
``torch_default_slowdown`` the same with torch's threads; ``default_vs_torch_busy`` = how much
faster the default is than torch's choice next to the busy core. The floor: next to a core that
is kept busy the job has one core fewer, so it cannot beat the same job run alone on the CPUs
left (``alone_on_free_cpus_seconds``, e.g. one thread of two); ``slowdown_floor`` = that over
``alone`` (the job's own gain from the busy core), ``busy_vs_floor`` = busy over it (1.0: the
default loses nothing to the contention itself). On a machine that is already
busy "alone" is not quiet: ``machine.load_1min`` says how busy it was. Prints one JSON line and
appends it to ``benchmarks/results/busy_cpu.jsonl``.

    python benchmarks/busy_cpu.py [--seconds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from timing import write_result  # noqa: E402  (this folder is on sys.path when run as a script)

JOB = r"""
import sys, time, torch
from codeclm.threads import set_threads
threads = set_threads(None if sys.argv[1] == "default" else int(sys.argv[1]))
from codeclm.codec import load_model
codec = load_model()  # the shipped default, whatever its class
wav = 0.1 * torch.randn(1, codec.channels, int(float(sys.argv[2]) * codec.sample_rate), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    codec.decode(codec.encode(wav[..., : codec.sample_rate], 6.0))  # warm-up
    t0 = time.perf_counter()
    codec.decode(codec.encode(wav, 6.0))
print(threads, time.perf_counter() - t0)
"""

SPIN = "import os\ntry:\n    os.sched_setaffinity(0, {0})\nexcept OSError:\n    pass\nwhile True:\n    pass\n"


def run_job(threads: str, seconds: float) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CODECLM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", JOB, threads, str(seconds)], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env)
    n, t = out.stdout.split()[-2:]
    return int(n), float(t)


def best(threads: str, seconds: float, repeats: int) -> tuple[int, float]:
    runs = [run_job(threads, seconds) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def main() -> None:
    from codeclm.threads import available_cpus, machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "busy_cpu.jsonl"))
    args = ap.parse_args()
    cpus = available_cpus()
    machine = machine_info()
    n_alone, alone = best("default", args.seconds, args.repeats)
    _, torch_alone = best(str(cpus), args.seconds, args.repeats)
    free = max(1, cpus - 1)
    _, floor = best(str(free), args.seconds, args.repeats)
    spin = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)
        n_busy, busy = best("default", args.seconds, args.repeats)
        _, torch_busy = best(str(cpus), args.seconds, args.repeats)
    finally:
        spin.kill()
        spin.wait()
    write_result({
        "benchmark": "busy_cpu",
        "job": f"shipped codec encode+decode, {args.seconds:g} s at 6 kbps",
        "machine": machine,
        "alone_seconds": round(alone, 3), "alone_threads": n_alone,
        "busy_seconds": round(busy, 3), "busy_threads": n_busy,
        "slowdown": round(busy / alone, 2),
        "alone_on_free_cpus_seconds": round(floor, 3), "free_cpus": free,
        "slowdown_floor": round(floor / alone, 2), "busy_vs_floor": round(busy / floor, 2),
        "torch_default_threads": cpus,
        "torch_default_alone_seconds": round(torch_alone, 3),
        "torch_default_busy_seconds": round(torch_busy, 3),
        "torch_default_slowdown": round(torch_busy / torch_alone, 2),
        "default_vs_torch_busy": round(torch_busy / busy, 2),
    }, args.results)


if __name__ == "__main__":
    main()
