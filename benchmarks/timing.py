"""Helpers shared by the benchmarks (scripts in this folder import it as ``timing``): timing, and
:func:`write_result` for the one JSON line each prints and appends to its results file.

On a shared machine other processes' load lands on whichever contender runs at the time, so the
contenders run in turn (the order alternating each round) and each keeps its best round; the CPU
time of this process is kept beside the wall time (it is far less sensitive to a busy machine).
"""

from __future__ import annotations

import json
import os
import time


def interleaved(fns: dict, rounds: int, warmup: bool = True) -> tuple[dict, dict]:
    """Best wall and best CPU seconds of each function over ``rounds`` interleaved rounds."""
    if warmup:
        for fn in fns.values():
            fn()
    wall = {name: float("inf") for name in fns}
    cpu = {name: float("inf") for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu


def best_time(fn, repeats: int):
    """``(best wall s, best CPU s, last result)`` of ``fn`` over ``repeats`` runs after a warm-up."""
    out = {}

    def keep():
        out["value"] = fn()

    wall, cpu = interleaved({"fn": keep}, repeats)
    return wall["fn"], cpu["fn"], out.get("value")


def matmul_floor_seconds(weights: list, rows: int, steps: int, repeats: int) -> float:
    """Best CPU seconds (over ``repeats``) of ``steps`` decoding steps' weight matmuls alone: each
    weight ``[out, in]`` applied once per step to ``rows`` rows, back to back. At small batch a step
    reads every weight once, so this is the memory-traffic bound of any fp32 implementation of the
    step (the LM and Dia benchmarks report it beside their speeds)."""
    import torch
    import torch.nn.functional as F

    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            c0 = time.process_time()
            for _ in range(steps):
                for w in weights:
                    F.linear(inputs[w.shape[1]], w)
            best = min(best, time.process_time() - c0)
    return best


def machine() -> dict:
    """The machine beside every number: CPU model, CPUs, torch threads, ISA, load average."""
    try:
        from codeclm.threads import machine_info

        return machine_info()
    except ImportError:  # run from outside the repository
        import platform

        return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "load_1min": round(os.getloadavg()[0], 2)}


def write_result(result: dict, path: str | None) -> str:
    """Print ``result`` as one JSON line and append it to the JSON-lines file ``path`` (none if
    empty or None, its folder made if needed); returns the line. A result without a ``machine``
    entry gets one (:func:`machine`: CPU model, threads, load), so no number goes out without it."""
    if "machine" not in result:
        result = {**result, "machine": machine()}
    line = json.dumps(result)
    print(line)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
    return line
