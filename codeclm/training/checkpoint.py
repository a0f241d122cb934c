"""Atomic checkpoints and exact resume.

A checkpoint is a folder ``out_dir/checkpoints/step_XXXXXX`` holding

* ``<name>.safetensors`` - each model's state dict (weight norm unfused, codebook buffers included),
* ``state.pt``          - optimizers, LR schedulers, weight EMA, the task's own state (loss balancer,
                          its seeded generators), all tensors/lists/dicts (``torch.load(weights_only=True)``),
* ``rng_<rank>.pt``     - each process' Python, NumPy and torch RNG states,
* ``meta.json``         - step, data position (epoch, batch within the epoch), process count, and
                          the size and SHA-256 of every other file (written last).

It is written into ``step_XXXXXX.tmp`` and renamed in one ``os.replace`` once every file is on
disk, then ``checkpoints/latest`` (the folder's name) is replaced atomically too. A crash at any
moment leaves the previous checkpoint complete and ``latest`` pointing at a complete folder.
Old checkpoints are renamed ``*.deleting`` before removal, so a half-deleted folder never looks valid.

A checkpoint is verified before it is trusted (:func:`verify_checkpoint`: meta.json, then every
file's size and hash, or for older checkpoints without hashes the safetensors headers and the
zip structure of the ``.pt`` files). :func:`latest_checkpoint` skips a corrupt or incomplete
newest step with a warning and returns the newest complete one; the step a run resumed from is
never pruned by that run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from codeclm.errors import ConfigError
from codeclm.pretrained import read_safetensors_header

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
LATEST = "latest"
_RESUMED: set[Path] = set()  # folders this process resumed from: never pruned by it
_VERIFIED: dict[Path, tuple] = {}  # folder -> (meta.json mtime, size) already verified


class CorruptCheckpointError(ConfigError):
    """A checkpoint folder that is incomplete or whose files are damaged."""


def _warn(message: str) -> None:
    """``train: warning: ...`` on stderr, once per run (from the first process only)."""
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(f"train: warning: {message}", file=sys.stderr, flush=True)


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
    """Checkpoint folders below ``root`` that have a ``meta.json`` (not yet verified), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _step_of(folder: Path) -> int | None:
    m = _STEP_DIR.match(folder.name)
    return int(m.group(1)) if m else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _check_safetensors(path: Path) -> None:
    """Header parses and the data it describes ends exactly at the end of the file (no loading)."""
    size = path.stat().st_size
    n, header = read_safetensors_header(path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"truncated or padded: the tensors need {8 + n + end} bytes, the file has {size}")


def _check_zip(path: Path) -> None:
    """A ``torch.save`` file is a zip: its directory must be there and every member's CRC right."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"member {bad} fails its CRC")


def verify_checkpoint(folder: str | os.PathLike) -> dict:
    """The checkpoint's ``meta.json`` once every file checks out; else :class:`CorruptCheckpointError`
    naming the file and the problem. Files listed in meta.json must have the recorded size and
    SHA-256; checkpoints written before hashes were recorded get structural checks."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CorruptCheckpointError(f"{folder}: not a complete checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        for key in ("step", "epoch", "batch"):
            if type(meta.get(key)) is not int or meta[key] < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {meta.get(key)!r}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{meta_path}: unreadable ({exc})") from None
    stamp = (meta_path.stat().st_mtime_ns, meta_path.stat().st_size)
    if _VERIFIED.get(folder.resolve()) == stamp:
        return meta
    files = meta.get("files")
    models = meta.get("models") or []
    needed = [f"{m}.safetensors" for m in models] + ["state.pt"]
    for name in needed:
        if not (folder / name).is_file():
            raise CorruptCheckpointError(f"{folder}: checkpoint has no {name}")
    if isinstance(files, dict):
        for name, rec in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                raise CorruptCheckpointError(f"{path}: missing (listed in meta.json)")
            size = path.stat().st_size
            if size != rec.get("size"):
                raise CorruptCheckpointError(f"{path}: {size} bytes, meta.json records {rec.get('size')} (truncated?)")
            if _sha256(path) != rec.get("sha256"):
                raise CorruptCheckpointError(f"{path}: contents do not match the SHA-256 in meta.json (corrupt)")
    else:  # written before checksums were recorded
        for path in sorted(folder.iterdir()):
            try:
                if path.suffix == ".safetensors":
                    _check_safetensors(path)
                elif path.suffix == ".pt":
                    _check_zip(path)
            except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as exc:
                raise CorruptCheckpointError(f"{path}: unreadable ({exc})") from None
    _VERIFIED[folder.resolve()] = stamp
    return meta


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete, verified checkpoint: the one ``checkpoints/latest`` names, else the
    newest that checks out; None if there is none. Each corrupt or incomplete one skipped on the
    way gets a warning on stderr naming it and the problem."""
    root = Path(out_dir) / "checkpoints"
    candidates = [p for _, p in reversed(checkpoint_steps(root))]
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    skipped = []
    for folder in candidates:
        try:
            verify_checkpoint(folder)
        except CorruptCheckpointError as exc:
            skipped.append(str(exc))
            continue
        for reason in skipped:
            _warn(f"skipping a corrupt checkpoint: {reason}; using {folder.name}")
        return folder
    for reason in skipped:
        _warn(f"skipping a corrupt checkpoint: {reason}; no complete checkpoint is left")
    return None


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
    accelerator.wait_for_everyone()  # every process' rng file is on disk
    if main:
        files = {p.name: _file_record(p) for p in sorted(tmp.iterdir())}
        meta = {**asdict(position), "num_processes": accelerator.num_processes, "models": sorted(models),
                "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")  # last: marks the folder complete
        _fsync_tree(tmp)
        if final.exists():  # the same step again (a run resumed from an older step): the new one wins
            doomed = final.with_name(final.name + ".deleting")
            os.replace(final, doomed)
            os.replace(tmp, final)
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        _VERIFIED.pop(final.resolve(), None)
        verify_checkpoint(final)  # read back: a checkpoint that does not check out is never pointed to
        write_text_atomic(root / LATEST, final.name + "\n")
        # the folder this run resumed from stays until the run has a newer complete checkpoint of its own
        _RESUMED.difference_update({p for p in _RESUMED if p.parent.resolve() == root.resolve()
                                    and _step_of(p) is not None and _step_of(p) < position.step})
        protected = {final.resolve()} | {p.resolve() for p in _RESUMED}
        older = [p for step, p in checkpoint_steps(root) if step <= position.step]
        for old in older[:-keep_last]:  # steps after this one (from an abandoned run) are left alone
            if old.resolve() not in protected:
                _remove(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(folder: str | os.PathLike, accelerator, models: dict) -> tuple[Position, dict]:
    """Verify the checkpoint, load models (in place) and this process' RNG states; return the
    position and ``state``. A damaged checkpoint is a one-line :class:`CorruptCheckpointError`."""
    folder = Path(folder)
    meta = verify_checkpoint(folder)
    for name, module in models.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise ConfigError(f"{folder}: checkpoint has no {name}.safetensors")
        try:
            weights = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CorruptCheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else exc!r})") \
                from None
        try:
            module.load_state_dict(weights)
        except RuntimeError as exc:
            raise ConfigError(f"{path}: does not fit the recipe's model ({str(exc).splitlines()[0]})") from None
    state = _torch_load(folder / "state.pt")
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{folder / 'state.pt'}: not a training state (a {type(state).__name__})")
    rng_path = folder / f"rng_{accelerator.process_index}.pt"
    if rng_path.is_file():
        rng = _torch_load(rng_path)
        try:
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise CorruptCheckpointError(f"{rng_path}: not an RNG state ({exc})") from None
    position = Position(meta["step"], meta["epoch"], meta["batch"])
    _RESUMED.add(folder)
    if meta.get("num_processes") != accelerator.num_processes:
        accelerator.print(f"train: warning: {folder.name} was written by {meta.get('num_processes')} processes, "
                          f"resuming with {accelerator.num_processes}: the batches will not repeat exactly")
    return position, state


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}: missing") from None
    except Exception as exc:  # truncated zip, bad pickle opcodes, ...
        raise CorruptCheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else exc!r})") \
            from None
