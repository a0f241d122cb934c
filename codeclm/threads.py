"""Thread count for codeclm's jobs: a default that does not oversubscribe a shared CPU.

Torch starts one thread per core whatever else runs; on a machine where other processes keep
cores busy, every parallel region then waits for its slowest thread (a thread that shares a
core with someone else), which costs more than it gains. :func:`default_threads` counts the
CPUs this process may use (affinity mask, cgroup quota) minus the ones other processes are
keeping busy right now (the 1-minute load average, before this job starts), at least one.
``CODECLM_THREADS`` or ``OMP_NUM_THREADS`` override it; every ``codeclm`` command takes
``--threads N``.
"""

from __future__ import annotations

import math
import os

__all__ = ["available_cpus", "default_threads", "set_threads", "machine_info"]


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_threads() -> int:
    """Threads for a job: the environment's choice, else the CPUs not already kept busy."""
    for var in ("CODECLM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    cpus = available_cpus()
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cpus, cpus - busy))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (None: :func:`default_threads`); returns the count."""
    import torch

    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def machine_info() -> dict:
    """CPU model, CPUs usable, torch threads and ISA level: printed beside benchmark numbers."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"cpu": model, "cpus": available_cpus(), "torch_threads": torch.get_num_threads(),
            "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "load_1min": load}
