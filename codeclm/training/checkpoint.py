"""Atomic checkpoints and exact resume.

A checkpoint is a folder ``out_dir/checkpoints/step_XXXXXX`` holding

* ``<name>.safetensors`` - each model's state dict (weight norm unfused, codebook buffers included),
* ``state.pt``          - optimizers, LR schedulers, weight EMA, the task's own state (loss balancer,
                          its seeded generators), all tensors/lists/dicts (``torch.load(weights_only=True)``),
* ``rng_<rank>.pt``     - each process' Python, NumPy and torch RNG states,
* ``meta.json``         - step, data position (epoch, batch within the epoch), process count.

It is written into ``step_XXXXXX.tmp`` and renamed in one ``os.replace`` once every file is on
disk, then ``checkpoints/latest`` (the folder's name) is replaced atomically too. A crash at any
moment leaves the previous checkpoint complete and ``latest`` pointing at a complete folder.
Old checkpoints are renamed ``*.deleting`` before removal, so a half-deleted folder never looks valid.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from codeclm.errors import ConfigError

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
LATEST = "latest"


@dataclass
class Position:
    """Where training is: optimizer steps done, and the next batch to read (epoch, index in epoch)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


# -- RNG states ----------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files -----------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _remove(folder: Path) -> None:
    doomed = folder.with_name(folder.name + ".deleting")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def checkpoint_steps(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders below ``root`` (those with ``meta.json``), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The folder ``checkpoints/latest`` names, else the newest complete one, else None."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "meta.json").is_file():
            return candidate
    steps = checkpoint_steps(root)
    return steps[-1][1] if steps else None


# -- save / load -----------------------------------------------------------------------------------
def save_checkpoint(accelerator, out_dir: str | os.PathLike, position: Position, models: dict,
                    state: dict, keep_last: int = 3) -> Path:
    """Write a checkpoint of ``position`` (collective: every process calls it).

    ``models`` maps names to (unwrapped) modules, ``state`` is the picklable-free training state
    (optimizer/scheduler/EMA/task state dicts) that the main process writes; every process
    writes its own RNG states. Returns the final folder.
    """
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{position.step:06d}"
    tmp = root / f"step_{position.step:06d}.tmp"
    main = accelerator.is_main_process
    if main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in list(root.glob("*.tmp")) + list(root.glob("*.deleting")):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    if main:
        for name, module in models.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / "state.pt")
        meta = {**asdict(position), "num_processes": accelerator.num_processes, "models": sorted(models)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    accelerator.wait_for_everyone()
    if main:
        _fsync_tree(tmp)
        if final.exists():  # the same step saved twice (never in a normal run): keep the first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
            _fsync_dir(root)
        write_text_atomic(root / LATEST, final.name + "\n")
        for _, old in checkpoint_steps(root)[:-keep_last]:
            if old != final:
                _remove(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(folder: str | os.PathLike, accelerator, models: dict) -> tuple[Position, dict]:
    """Load models (in place) and this process' RNG states; return the position and ``state``."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise ConfigError(f"{folder}: not a complete checkpoint (no meta.json)")
    meta = json.loads(meta_path.read_text())
    for name, module in models.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise ConfigError(f"{folder}: checkpoint has no {name}.safetensors")
        weights = load_file(str(path))
        try:
            module.load_state_dict(weights)
        except RuntimeError as exc:
            raise ConfigError(f"{path}: does not fit the recipe's model ({str(exc).splitlines()[0]})") from None
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    rng_path = folder / f"rng_{accelerator.process_index}.pt"
    if rng_path.is_file():
        set_rng_state(torch.load(rng_path, weights_only=True))
    position = Position(meta["step"], meta["epoch"], meta["batch"])
    if meta.get("num_processes") != accelerator.num_processes:
        accelerator.print(f"train: warning: {folder.name} was written by {meta.get('num_processes')} processes, "
                          f"resuming with {accelerator.num_processes}: the batches will not repeat exactly")
    return position, state
