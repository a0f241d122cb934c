"""What every pipeline shares, written once (AudioCraft's ``BaseGenModel``):

* :class:`BasePipeline`: ``to`` / ``device`` over the pipeline's modules, seeded generators,
  progress bars, and ``pipeline.json`` through :func:`write_pipeline_info`;
* :func:`read_pipeline_info` / :func:`write_pipeline_info`: the one reader and writer of
  ``pipeline.json``, which checks what it stores (type, format version, max_duration, the codec
  identity, the types of the known keys);
* :data:`PIPELINES`: pipeline classes by ``pipeline.json`` ``type`` (lazy module paths);
  :func:`pipeline_class` / :func:`load_pipeline` open any folder as its own class; a new pipeline
  is one module plus one line here;
* :func:`audio_argument`: "an audio path, a float tensor ``[channels, samples]`` at the model's
  rate, or ``(tensor, rate)``" -> a checked float waveform, for every audio input.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from codeclm.audio import audio_argument  # noqa: F401  (re-exported: it lived here)
from codeclm.errors import ConfigError

__all__ = ["FORMAT", "PIPELINES", "PIPELINE_FILE", "BasePipeline", "audio_argument", "check_codec_identity",
           "load_pipeline", "pipeline_class", "pipeline_type", "read_pipeline_info", "write_pipeline_info"]

PIPELINE_FILE = "pipeline.json"
FORMAT = 1

# pipeline.json "type" -> "module:Class" (imported only when a folder of that type is opened)
PIPELINES: dict[str, str] = {
    "text-to-music": "codeclm.pipelines.music:TextToMusic",
    "voice-clone": "codeclm.pipelines.clone:VoiceClone",
    "dia": "codeclm.pipelines.dia:DiaVoiceClone",
}

# known keys and what they must hold (others are kept as they are: a training run's description)
_TYPES: dict[str, tuple[type, ...]] = {"languages": (list,), "defaults": (dict,), "codec_identity": (dict,)}


# -- pipeline.json ---------------------------------------------------------------------------------
def _check_info(info, path: Path) -> dict:
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: invalid pipeline description (not a JSON object)")
    kind = info.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{path}: invalid pipeline description (no \"type\")")
    version = info.get("format", FORMAT)
    if type(version) is not int or version != FORMAT:
        raise ConfigError(f"{path}: pipeline format {version!r} is not supported (this codeclm reads format "
                          f"{FORMAT}; a newer codeclm may read it)")
    if "max_duration" in info:
        value = info["max_duration"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{path}: max_duration must be a positive number of seconds, got {value!r}")
    for key, types in _TYPES.items():
        if key in info and not isinstance(info[key], types):
            raise ConfigError(f"{path}: {key} must be a JSON {'list' if types == (list,) else 'object'}, "
                              f"got {info[key]!r}")
    if "languages" in info and not all(isinstance(x, str) for x in info["languages"]):
        raise ConfigError(f"{path}: languages must be a list of language codes")
    recorded = info.get("codec_identity")
    if recorded is not None and not {"name", "sha256"} <= set(recorded):
        raise ConfigError(f"{path}: codec_identity must be an object with name and sha256")
    return info


def pipeline_type(folder: str | os.PathLike) -> str | None:
    """``pipeline.json``'s type, or None when it is missing or unreadable (read_pipeline_info says why)."""
    try:
        kind = json.loads((Path(folder) / PIPELINE_FILE).read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def read_pipeline_info(folder: str | os.PathLike, kind: str | None = None, parts: tuple[str, ...] = ()) -> dict:
    """``pipeline.json`` of a pipeline folder of type ``kind`` (None: any) holding the sub-folders
    ``parts``, checked (see :func:`write_pipeline_info`); one-line ConfigError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model folder")
    path = folder / PIPELINE_FILE
    if not path.exists():
        raise ConfigError(f"{folder}: not a {kind + ' ' if kind else ''}pipeline folder (missing {PIPELINE_FILE})")
    try:
        info = json.loads(path.read_text())
        found = info["type"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: invalid pipeline description ({exc})") from None
    if isinstance(info, dict) and kind is not None and found != kind:
        raise ConfigError(f"{folder}: holds a {found!r} pipeline, not {kind!r}")
    _check_info(info, path)
    for sub in parts:
        if not (folder / sub).is_dir():
            raise ConfigError(f"{folder}: missing {sub}/")
    return info


def write_pipeline_info(folder: str | os.PathLike, kind: str, codec=None, **extra) -> dict:
    """Write ``folder/pipeline.json``: ``{"type": kind, "format": FORMAT, **extra}`` plus the
    ``codec_identity`` of ``codec`` (a codec object, or the folder of one: the codec as saved).
    The same checks as :func:`read_pipeline_info` run first: a bad value is never written."""
    folder = Path(folder)
    info = {"type": kind, "format": FORMAT, **extra}
    if codec is not None:
        if isinstance(codec, (str, os.PathLike)):
            from codeclm.codec import load_model

            codec = load_model(codec)
        info["codec_identity"] = codec.identity()
    _check_info(info, folder / PIPELINE_FILE)
    (folder / PIPELINE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_codec_identity(info: dict, codec, folder: Path) -> None:
    """Refuse a pipeline whose ``codec/`` is not the codec ``pipeline.json`` records
    (``codec_identity``: name and weight hash), e.g. one swapped for another codec."""
    recorded = info.get("codec_identity")
    if recorded is None or not hasattr(codec, "identity"):
        return
    if not isinstance(recorded, dict) or not {"name", "sha256"} <= set(recorded):
        raise ConfigError(f"{folder / PIPELINE_FILE}: codec_identity must be an object with name and sha256")
    found = codec.identity()
    if (found["name"], found["sha256"]) != (recorded["name"], recorded["sha256"]):
        raise ConfigError(f"{folder}: codec/ holds {found['name']!r} (weights sha256 {found['sha256'][:12]}), but this "
                          f"model was made for {recorded['name']!r} (sha256 {str(recorded['sha256'])[:12]}); the "
                          "folder's codec was replaced")


# -- registry --------------------------------------------------------------------------------------
def pipeline_class(kind: str) -> type:
    """The class registered for a ``pipeline.json`` type (imported on first use)."""
    if kind not in PIPELINES:
        raise ConfigError(f"unknown pipeline type {kind!r} (known: {', '.join(PIPELINES)})")
    module, name = PIPELINES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_pipeline(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """Open any pipeline folder as the class its ``pipeline.json`` names."""
    info = read_pipeline_info(folder)
    return pipeline_class(info["type"]).from_pretrained(folder, device=device)


# -- audio arguments -------------------------------------------------------------------------------
# -- the base --------------------------------------------------------------------------------------
class BasePipeline:
    """Device, seeding, progress and ``pipeline.json`` for every pipeline. A subclass sets
    ``kind`` (its ``pipeline.json`` type, registered in :data:`PIPELINES`) and lists its torch
    modules in :meth:`_modules`."""

    kind = "pipeline"

    def _modules(self) -> list:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for m in self._modules():
            if m is not None:
                return next(m.parameters()).device
        return torch.device("cpu")

    def to(self, device: str | torch.device):
        for m in self._modules():
            if m is not None:
                m.to(device)
        return self

    def _generator(self, seed: int | None, do_sample: bool = True) -> torch.Generator | None:
        """A generator on the pipeline's device seeded with ``seed`` (None: 0); None when greedy."""
        if not do_sample:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0 if seed is None else int(seed))
        return generator

    @contextmanager
    def _progress(self, enabled: bool, total: int | None = None, unit: str = "step",
                  desc: str | None = None) -> Iterator[Callable | None]:
        """``on_step(done, total)`` advancing a tqdm bar (None when disabled); closed on exit."""
        if not enabled:
            yield None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit=unit, desc=desc or self.kind, leave=False)
        try:
            yield lambda *args: bar.update(1)
        finally:
            bar.close()

    def _write_info(self, folder: Path, codec=None, **extra) -> dict:
        return write_pipeline_info(folder, self.kind, codec, **extra)

    @classmethod
    def _read_info(cls, folder: Path, parts: tuple[str, ...]) -> dict:
        return read_pipeline_info(folder, cls.kind, parts)
