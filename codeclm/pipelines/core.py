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
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from codeclm.audio import audio_argument  # noqa: F401  (re-exported: it lived here)
from codeclm.errors import ConfigError
from codeclm.pipeline_info import FORMAT, PIPELINE_FILE, check_codec_identity, pipeline_type  # noqa: F401
from codeclm.pipeline_info import read_pipeline_info  # noqa: F401
from codeclm.pipeline_info import write_pipeline_info as _write_pipeline_info

__all__ = ["FORMAT", "PIPELINES", "PIPELINE_FILE", "BasePipeline", "audio_argument", "check_codec_identity",
           "load_pipeline", "pipeline_class", "pipeline_type", "read_pipeline_info", "write_pipeline_info"]

# pipeline.json "type" -> "module:Class" (imported only when a folder of that type is opened)
PIPELINES: dict[str, str] = {
    "text-to-music": "codeclm.pipelines.music:TextToMusic",
    "voice-clone": "codeclm.pipelines.clone:VoiceClone",
    "dia": "codeclm.pipelines.dia:DiaVoiceClone",
}

# -- registry --------------------------------------------------------------------------------------
def pipeline_class(kind: str) -> type:
    """The class registered for a ``pipeline.json`` type (imported on first use)."""
    if kind not in PIPELINES:
        raise ConfigError(f"unknown pipeline type {kind!r} (known: {', '.join(PIPELINES)})")
    module, name = PIPELINES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def write_pipeline_info(folder: str | os.PathLike, kind: str, codec=None, /, **extra) -> dict:
    """:func:`codeclm.pipeline_info.write_pipeline_info`, where ``codec`` may also be a codec folder
    (its identity is that of the codec as loaded)."""
    if isinstance(codec, (str, os.PathLike)):
        from codeclm.codec import load_model

        codec = load_model(codec)
    return _write_pipeline_info(folder, kind, codec, **extra)


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
