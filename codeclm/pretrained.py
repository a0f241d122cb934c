"""Model folders: ``config.json`` + ``model.safetensors``, like Hugging Face, never pickle.

Shared by the codec and the language models. Weights saved by codeclm are *fused* (weight
norm folded into plain weights), so a folder is independent of how the model was trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import types
import typing
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


MAX_PARAMETERS = 1 << 32  # elements a config may describe (16 GiB of float32): far above any model here


class SavedConfig:
    """``to_dict``/``from_dict`` for config dataclasses stored as ``config.json``.

    Subclasses (dataclasses) set ``model_type`` (written to the file and checked on load) and
    ``kind`` (a word for messages). Unknown keys are refused with the list of valid ones, and
    every value must have its field's type exactly (:func:`check_value`: no ``"16"`` for an int,
    no ``"no"`` for a bool, no ``128.0`` or ``null`` for an int, no NaN), all before the config
    object exists. A subclass that can describe its weights' shapes without allocating them
    (:meth:`expected_shapes`) has them compared with the ``model.safetensors`` header next to
    its ``config.json`` before any model is built.
    """

    model_type: ClassVar[str]
    kind: ClassVar[str]

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config"):
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object of {cls.kind.lower()} settings, got "
                              f"{_json_type(data)}")
        data = dict(data)
        found = data.pop("model_type", cls.model_type)
        if found != cls.model_type:
            raise ConfigError(f"{source}: holds a {found!r} model, not a codeclm {cls.kind} ({cls.model_type!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown {cls.kind.lower()} config keys {unknown}; valid keys: {sorted(known)}")
        hints = _type_hints(cls)
        for key, value in data.items():
            if key in hints:
                problem = check_value(value, hints[key])
                if problem:
                    raise ConfigError(f"{source}: {key} must be {problem}, got {_json_repr(value)}")
        try:
            config = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except ConfigError as exc:  # validate(): name the file
            raise ConfigError(f"{source}: {exc}") from None
        if Path(source).name == CONFIG_NAME:
            config.check_weights_header(Path(source).with_name(WEIGHTS_NAME))
        return config

    # -- sizes -------------------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Shapes of the weights a model of this config has, computed without allocating them
        (e.g. on the ``meta`` device); None when the subclass does not know. Keys of optional
        tensors (left out of inference-only folders) are listed by :meth:`optional_weights`."""
        return None

    def optional_weights(self) -> tuple[str, ...]:
        """Key suffixes that a weights file may leave out."""
        return ()

    def check_weights_header(self, path: Path) -> None:
        """Compare :meth:`expected_shapes` with the safetensors header at ``path`` (no tensor
        is read) and the total size with :data:`MAX_PARAMETERS`: a config that does not describe
        its weights is refused before a model of it is built."""
        expected = self.expected_shapes()
        if expected is None:
            return
        total = sum(math.prod(s) for s in expected.values())
        if total > MAX_PARAMETERS:
            raise ConfigError(f"{path.with_name(CONFIG_NAME)}: describes a model of {total:,} parameters (more than "
                              f"{MAX_PARAMETERS:,}); the config is corrupt")
        if not path.is_file():
            return
        stored = safetensors_shapes(path)
        optional = self.optional_weights()
        missing = sorted(k for k in set(expected) - set(stored) if not k.endswith(optional))
        unexpected = sorted(set(stored) - set(expected))
        wrong = sorted(k for k in set(expected) & set(stored) if tuple(expected[k]) != tuple(stored[k]))
        if missing or unexpected or wrong:
            detail = (f"{wrong[0]} has shape {tuple(stored[wrong[0]])} in the weights, {tuple(expected[wrong[0]])} "
                      "in the config" if wrong else f"missing {missing[:3]}, unexpected {unexpected[:3]}")
            raise ConfigError(f"{path.with_name(CONFIG_NAME)}: does not match the weights in {path.name} ({detail})")


def _type_hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: no type checks rather than a crash
        return {}


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _json_repr(value) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def check_value(value, hint) -> str | None:
    """None if ``value`` (parsed JSON) has exactly the type ``hint``, else what it must be.

    Strict: ``bool`` only ``true``/``false``; ``int`` a whole JSON number that is not a bool or
    float (``128.0`` is refused); ``float`` any finite number (ints allowed, NaN and inf not);
    ``str`` a string; ``list[X]`` (or tuple) a list whose items are X; ``X | None`` also null;
    ``Literal[...]`` one of the values. Unknown annotations are not checked.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [check_value(value, a) for a in options]
        if any(p is None for p in problems):
            return None
        what = " or ".join(p for p in problems if p)
        return what + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return None if value in args else "one of " + ", ".join(map(repr, args))
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None if math.isfinite(value) else "a finite number"
        return "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return f"a list of {len(args)} items"
            item_hints = args
        else:
            item_hints = [args[0] if args else typing.Any] * len(value)
        for item, item_hint in zip(value, item_hints):
            problem = check_value(item, item_hint)
            if problem:
                return f"a list of items that are each {problem}"
        return None
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return "an object"
        if len(args) == 2:
            for item in value.values():
                problem = check_value(item, args[1])
                if problem:
                    return f"an object whose values are each {problem}"
        return None
    return None


def read_safetensors_header(path: str | os.PathLike) -> tuple[int, dict]:
    """``(n, header)``: the byte length and parsed JSON of a safetensors file's header, reading no
    tensor data; ValueError (or OSError) when the file is too short or the header does not fit it."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            raise ValueError(f"header of {n} bytes does not fit the file ({size} bytes)")
        return n, json.loads(f.read(n))


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header, reading no tensor data."""
    path = Path(path)
    try:
        _, header = read_safetensors_header(path)
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable safetensors file ({exc})") from None


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
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{source}: weight {key} holds NaN or infinite values; the model file is corrupt")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})


def load_folder(model_cls, config_cls: type[SavedConfig], folder: str | os.PathLike, prepare=None):
    """``model_cls(config)`` for the folder's ``config.json`` (checked by ``config_cls.from_dict``)
    with its ``model.safetensors`` loaded; ``prepare(weights, model)`` may complete the weights
    first (e.g. statistics an inference-only folder leaves out). The model is returned as built
    (device, train/eval mode): the caller moves it."""
    folder = Path(folder)
    config = config_cls.from_dict(read_config(folder), source=str(folder / CONFIG_NAME))
    model = model_cls(config)
    weights = read_weights(folder)
    if prepare is not None:
        prepare(weights, model)
    load_weights_into(model, weights, str(folder))
    return model


def save_folder(folder: str | os.PathLike, config: dict, state: dict[str, torch.Tensor],
                dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically (temp files, then rename); the
    tensors are written from CPU copies (a model on another device saves as it is)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in state.items()}
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


def convert_transformers_model(model_or_folder, class_name: str, what: str, build, rename,
                               weights=fused_state_dict):
    """A codeclm model of a ``transformers`` one (object or saved folder), in eval mode.

    ``build(hf_config)`` makes the (empty) codeclm model; each of its state keys ``k`` takes
    ``weights(hf_model)[rename(k)]`` as float32 (one missing is a ConfigError naming it, ``what``
    says whose import: "EnCodec", "DAC"). Weight norm is folded by the default ``weights``.
    """
    hf = load_transformers_model(model_or_folder, class_name, class_name)
    model = build(hf.config)
    theirs = weights(hf)
    ours = {}
    for key in model.state_dict():
        source = rename(key)
        if source not in theirs:
            raise ConfigError(f"{what} import: weight {source!r} missing from the transformers model")
        ours[key] = theirs[source].detach().to(torch.float32)
    load_weights_into(model, ours, f"transformers {class_name}")
    return model.eval()
