"""Thread count for codeclm's jobs: a default that does not oversubscribe a shared CPU.

Torch starts one thread per core whatever else runs; on a machine where other processes keep
cores busy, every parallel region then waits for its slowest thread (a thread that shares a
core with someone else), which costs more than it gains. :func:`default_threads` counts the
CPUs this process may use (affinity mask, cgroup quota) minus the ones other processes are
keeping busy right now (``/proc/stat`` over 50 ms before the job starts; else the load
average), at least one.
``CODECLM_THREADS`` or ``OMP_NUM_THREADS`` override it; every ``codeclm`` command takes
``--threads N``.
"""

from __future__ import annotations

import math
import os

__all__ = ["available_cpus", "busy_cpus", "default_threads", "set_threads", "machine_info"]


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


def busy_cpus(interval: float = 0.05) -> float:
    """CPUs other processes keep busy now: /proc/stat sampled over ``interval`` seconds (this
    process is idle meanwhile), else the 1-minute load average."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        import time

        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
        ticks = os.sysconf("SC_CLK_TCK") * interval
        if t1 > t0:
            return max(0.0, ((t1 - t0) - (i1 - i0)) / ticks)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads() -> int:
    """Threads for a job: the environment's choice, else the CPUs not already kept busy."""
    for var in ("CODECLM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    cpus = available_cpus()
    busy = min(cpus, round(busy_cpus())) if cpus > 1 else 0
    return max(1, cpus - busy)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (None: :func:`default_threads`); returns the count."""
    import torch

    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor name elsewhere)."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``avx2``, ``avx512_bf16``, ``amx_bf16``...); empty where unknown."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX-BF16 or AVX512-BF16). Elsewhere oneDNN
    emulates bf16 and autocast makes convolutions 10-80x *slower* than fp32 (measured on an AVX2
    AMD EPYC) and voice clones 1.2-1.7x slower through the NAR (an AVX512 Xeon without bf16)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def machine_info() -> dict:
    """CPU model, CPUs usable, torch threads and ISA level: printed beside benchmark numbers."""
    import torch

    model = cpu_model()
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"cpu": model, "cpus": available_cpus(), "torch_threads": torch.get_num_threads(),
            "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "load_1min": load}
