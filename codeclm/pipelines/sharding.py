"""Split a list of generation jobs across processes (Accelerate / torchrun), reproducibly.

    accelerate launch --num_processes 2 generate.py music --prompts-file prompts.txt --out-dir out/
    torchrun --nproc_per_node 2 generate.py music --prompts-file prompts.txt --out-dir out/   # CPU-only hosts

Each process takes a contiguous slice of the jobs (the first ``len % world`` processes one more).
A job carries its global index, and its seed is derived from that index (``seed + index``), never
from the rank or from which other jobs share a process, so N processes write exactly the files
one process writes.

On a host without a GPU the processes talk over gloo (``PartialState(cpu=True)``), as the trainer
does; ``accelerate launch --cpu --num_processes N`` starts a single process unless run under MPI,
so use ``torchrun`` (or ``accelerate launch --multi_gpu``) there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

__all__ = ["Shard", "job_seed", "launched_world_size", "process_shard", "shard_range"]

T = TypeVar("T")


def job_seed(seed: int | None, index: int) -> int:
    """Seed of job ``index``: ``seed + index`` (independent of the process layout)."""
    return (0 if seed is None else int(seed)) + int(index)


def shard_range(n: int, rank: int, world: int) -> range:
    """Indices ``[start, stop)`` of ``n`` jobs that process ``rank`` of ``world`` runs (contiguous,
    like ``PartialState.split_between_processes``)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for {world} processes")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def launched_world_size() -> int:
    """Processes started by the launcher (torchrun / accelerate / MPI), from the environment."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        value = os.environ.get(key)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                pass
    return 1


@dataclass
class Shard(Generic[T]):
    """This process's jobs: ``items`` (``(global_index, job)`` pairs), its rank and the world size."""

    items: list[tuple[int, T]]
    rank: int
    world: int
    device: torch.device
    state: object | None = None  # the accelerate PartialState when launched with several processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Tear down the process group (if this module started one)."""
        if self.state is not None:
            self.state.destroy_process_group()
        self.state = None


def process_shard(jobs: list[T], device: str | None = None) -> Shard[T]:
    """This process's share of ``jobs``. A single process (no launcher) gets everything and starts
    no process group; under a launcher, Accelerate's :class:`PartialState` gives rank, world size
    and device (the CPU with gloo when there is no GPU). ``device`` forces one ("cpu", "cuda")."""
    from codeclm.devices import resolve_device

    world, rank, state = launched_world_size(), 0, None
    dev = resolve_device(device)  # a one-line CodecLMError for "nonsense" or cuda on a CPU build
    if world > 1:
        from accelerate import PartialState

        state = PartialState(cpu=dev.type == "cpu")
        rank, world = state.process_index, state.num_processes
        if dev.type != "cpu":
            dev = state.device
    indices = shard_range(len(jobs), rank, world)
    return Shard([(i, jobs[i]) for i in indices], rank, world, dev, state)
