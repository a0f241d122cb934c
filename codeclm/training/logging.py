"""What a run reports: a tqdm bar, ``metrics.jsonl``, TensorBoard scalars and audio (main process only).

``metrics.jsonl`` has one JSON object per logged step (``{"step": 12, "train/mel": 1.93, ...}``);
on resume the lines after the checkpoint's step are dropped, so the file of a resumed run equals
the file of an uninterrupted one (the kill-and-resume test compares them).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codeclm.training.checkpoint import write_text_atomic


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of ``path`` whose step is <= ``last_step`` (atomic rewrite)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a line cut by a kill: everything after it is gone too
    write_text_atomic(path, "".join(k + "\n" for k in kept))


class RunLogger:
    """Averages per-step scalars over ``log_every`` steps and writes them everywhere.

    Scalars are averaged across processes too (one all-reduce per logged step), so every
    process must call :meth:`log_step` at the same steps.
    """

    def __init__(self, accelerator, out_dir: Path, max_steps: int, start_step: int, samples_per_batch: int):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.path = out_dir / "metrics.jsonl"
        self.samples_per_batch = samples_per_batch  # all processes, one micro-batch (one add())
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.window_start = time.perf_counter()
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not self.main, dynamic_ncols=True,
                        desc="train", file=sys.stderr, mininterval=1.0)
        if self.main:
            truncate_jsonl(self.path, start_step)
            self.file = open(self.path, "a")

    def info(self, msg: str) -> None:
        if self.main:
            tqdm.write(f"train: {msg}", file=sys.stderr)

    def add(self, values: dict[str, float | torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)
        self.count += 1

    def log_step(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Write the averaged window ending at ``step`` (collective); returns what was written."""
        names = sorted(self.sums)
        means = torch.tensor([self.sums[n] / max(self.count, 1) for n in names], dtype=torch.float64,
                             device=self.accelerator.device)
        if self.accelerator.num_processes > 1 and names:
            means = self.accelerator.reduce(means, reduction="mean")
        elapsed = time.perf_counter() - self.window_start
        row = {f"train/{n}": float(v) for n, v in zip(names, means.tolist())}
        row["train/samples_per_s"] = self.count * self.samples_per_batch / max(elapsed, 1e-9)
        row.update(extra or {})
        self.sums.clear()
        self.count = 0
        self.window_start = time.perf_counter()
        self.write(step, row)
        if self.main:
            main_loss = next((row[k] for k in ("train/mel", "train/loss", "train/ce") if k in row), None)
            post = {"sps": f"{row['train/samples_per_s']:.1f}"}
            if main_loss is not None:
                post = {"loss": f"{main_loss:.4g}", **post}
            self.bar.set_postfix(post, refresh=False)
        return row

    def write(self, step: int, row: dict[str, float]) -> None:
        """One metrics line + TensorBoard scalars (main process; no collective)."""
        if not self.main:
            return
        self.file.write(json.dumps({"step": step, **row}) + "\n")
        self.file.flush()  # survives kill -9 (the OS holds the data)
        self.accelerator.log(row, step=step)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def audio(self, tag: str, wav: torch.Tensor, step: int, sample_rate: int) -> None:
        """A ``[C, T]`` clip to TensorBoard (first channel)."""
        if not self.main:
            return
        clip = wav.detach().float().cpu()[0].clamp(-1, 1)
        writer = None
        try:
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
        except (ValueError, KeyError):
            pass
        if writer is not None and hasattr(writer, "add_audio"):
            writer.add_audio(tag, clip, global_step=step, sample_rate=sample_rate)
            return
        from codeclm.audio import save_audio  # no TensorBoard: a WAV file per clip under out_dir/audio

        path = self.path.parent / "audio" / f"{tag.replace('/', '_')}_step{step}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_audio(path, clip[None], sample_rate)

    def close(self) -> None:
        self.bar.close()
        if self.main:
            self.file.close()
