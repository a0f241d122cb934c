"""``pipeline.json``: the one reader and writer of a pipeline folder's description.

A pipeline folder (``codeclm music``'s, ``clone``'s, an exported training run) holds its parts
(``lm/``, ``codec/``, ``text/``...) and ``pipeline.json``: its ``type`` (which class opens it,
see ``codeclm.pipelines.core.PIPELINES``), the ``format`` version, and what the parts need to
work together (codec identity, bandwidth, languages, conditions...). Everything that writes the
file (the pipelines' ``save_pretrained``, the training tasks' exports) and everything that reads
it goes through :func:`write_pipeline_info` / :func:`read_pipeline_info`, which check what they
store. This module sits below the pipelines and the training tasks so both can use it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from codeclm.errors import ConfigError
from codeclm.fileio import atomic_output

__all__ = ["FORMAT", "PIPELINE_FILE", "check_codec_identity", "pipeline_type", "read_pipeline_info",
           "write_pipeline_info"]

PIPELINE_FILE = "pipeline.json"
FORMAT = 1

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
    for key in ("max_duration", "window_seconds"):  # seconds: one generation / one long-form window
        if key in info:
            value = info[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{path}: {key} must be a positive number of seconds, got {value!r}")
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


def write_pipeline_info(folder: str | os.PathLike, kind: str, codec=None, /, **extra) -> dict:
    """Write ``folder/pipeline.json`` atomically: ``{"type": kind, "format": FORMAT, **extra}`` plus
    the ``codec_identity`` of ``codec`` (a codec object; or pass ``codec_identity`` in ``extra``;
    a ``codec=`` keyword is the ``"codec"`` key, e.g. the codec folder a training run used).
    The same checks as :func:`read_pipeline_info` run first: a bad value is never written."""
    folder = Path(folder)
    info = {"type": kind, "format": FORMAT, **extra}
    if codec is not None:
        info["codec_identity"] = codec.identity()
    _check_info(info, folder / PIPELINE_FILE)
    with atomic_output(folder / PIPELINE_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
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
