"""Model folders: ``config.json`` + ``model.safetensors``, like Hugging Face, never pickle.

Shared by the codec and the language models. Weights saved by codeclm are *fused* (weight
norm folded into plain weights), so a folder is independent of how the model was trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from codeclm.errors import ConfigError
from codeclm.fileio import atomic_output

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def default_checkpoint(name: str) -> Path:
    """Folder of a shipped default model: ``$CODECLM_CHECKPOINTS/NAME`` or the repo's ``checkpoints/NAME``."""
    folder = Path(os.environ.get("CODECLM_CHECKPOINTS", CHECKPOINTS_DIR)) / name
    if not (folder / CONFIG_NAME).exists() and not (folder / "pipeline.json").exists():
        raise ConfigError(f"{folder}: the shipped default model {name!r} is missing (pass a model folder)")
    return folder


class SavedConfig:
    """``to_dict``/``from_dict`` for config dataclasses stored as ``config.json``.

    Subclasses (dataclasses) set ``model_type`` (written to the file and checked on load) and
    ``kind`` (a word for messages). Unknown keys are refused with the list of valid ones.
    """

    model_type: ClassVar[str]
    kind: ClassVar[str]

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config"):
        data = dict(data)
        found = data.pop("model_type", cls.model_type)
        if found != cls.model_type:
            raise ConfigError(f"{source}: holds a {found!r} model, not a codeclm {cls.kind} ({cls.model_type!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown {cls.kind.lower()} config keys {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def fused_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with weight-norm parametrizations folded into plain ``weight`` tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if ".parametrizations." not in key:
            out[key] = tensor
            continue
        owner, rest = key.split(".parametrizations.", 1)
        pname = rest.split(".", 1)[0]
        out[f"{owner}.{pname}"] = getattr(model.get_submodule(owner), pname).detach()
    return {k: v.detach().contiguous() for k, v in out.items()}


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A folder's JSON description; one-line ConfigError if it is missing or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path.parent}: not a {what} folder (missing {path.name})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc})") from None


def read_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model folder")
    return read_json(folder / CONFIG_NAME, "model")


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_NAME
    if not path.exists():
        raise ConfigError(f"{folder}: missing {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable safetensors file ({exc})") from None


def load_weights_into(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load (fp16 or fp32) weights into ``model``; missing or unexpected keys are an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{source}: weights do not match the config (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    for key, tensor in weights.items():
        if tensor.shape != expected[key].shape:
            raise ConfigError(f"{source}: {key} has shape {tuple(tensor.shape)}, config expects "
                              f"{tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})


def save_folder(folder: str | os.PathLike, config: dict, state: dict[str, torch.Tensor],
                dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically (temp files, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    with atomic_output(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    with atomic_output(folder / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return folder


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """A stable SHA-256 of the weights (float32 bytes, sorted keys): a model's identity."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_transformers_model(model_or_folder, class_name: str, what: str):
    """A ``transformers`` model object as given, or loaded from a folder saved by ``save_pretrained``."""
    if not isinstance(model_or_folder, (str, os.PathLike)):
        return model_or_folder
    folder = Path(model_or_folder)
    if not (folder / CONFIG_NAME).exists():
        raise ConfigError(f"{folder}: not a transformers model folder (no {CONFIG_NAME})")
    import transformers

    try:
        return getattr(transformers, class_name).from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds
        raise ConfigError(f"{folder}: could not load as a transformers {what} ({exc})") from None
