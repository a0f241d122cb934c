"""Ship a trained pipeline folder: :func:`export`; on the command line ``codeclm export SRC DST``
or ``python -m codeclm.pipelines.export SRC DST [--dtype float16]`` (both: :mod:`codeclm.cli.export`).

    python -m codeclm.pipelines.export runs/lm_music/model checkpoints/music \
        --checkpoint runs/lm_music/checkpoints/step_001750      # the weights of an earlier step

Reads the folder a training run exports (``runs/lm_music/model``: text-to-music,
``runs/valle/model``: voice-clone), loads it as its pipeline (so a broken export fails here, not
for users) and writes it again with the LM/VALL-E and codec weights in ``--dtype`` (fp16 by
default: half the size; they are computed in fp32 on load). ``--checkpoint STEP_DIR`` takes the
weights of a training checkpoint instead of the folder's (each ``NAME/`` part of the folder from
``STEP_DIR/NAME.safetensors``), e.g. the step with the best validation loss. DST is written to a temporary folder
beside it and renamed, so an interrupted export leaves no half-written model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from codeclm.errors import CodecLMError, ConfigError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}


def _with_checkpoint(src: Path, checkpoint: Path, tmp: Path) -> Path:
    """A copy of the pipeline folder ``src`` whose parts hold the checkpoint's weights."""
    if not checkpoint.is_dir():
        raise ConfigError(f"{checkpoint}: no such checkpoint folder")
    shutil.copytree(src, tmp)
    replaced = []
    for part in sorted(p for p in tmp.iterdir() if (p / "model.safetensors").is_file()):
        weights = checkpoint / f"{part.name}.safetensors"
        if weights.is_file():
            shutil.copy(weights, part / "model.safetensors")
            replaced.append(part.name)
    if not replaced:
        raise ConfigError(f"{checkpoint}: holds no weights for the parts of {src}")
    return tmp


def export(src: str | Path, dst: str | Path, dtype: str = "float16", force: bool = False,
           checkpoint: str | Path | None = None) -> Path:
    src, dst = Path(src), Path(dst)
    from codeclm.pipelines.core import PIPELINES, pipeline_class, read_pipeline_info

    kind = read_pipeline_info(src)["type"]  # the one checked reader
    if kind not in PIPELINES:
        raise ConfigError(f"{src}: unknown pipeline type {kind!r} (known: {', '.join(PIPELINES)})")
    if dst.exists() and not force:
        raise CodecLMError(f"{dst}: exists (use --force to replace it)")
    cls = pipeline_class(kind)  # the registry keyed by pipeline.json's type (lazy imports)
    tmp = dst.with_name(f".{dst.name}.tmp")
    staged = dst.with_name(f".{dst.name}.ckpt")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    try:
        pipe = cls.from_pretrained(_with_checkpoint(src, Path(checkpoint), staged) if checkpoint else src)
        pipe.save_pretrained(tmp, DTYPES[dtype])
        if kind == "text-to-music":  # keep the training run's description (pattern, bandwidth, ...)
            info = {**json.loads((src / "pipeline.json").read_text()), **json.loads((tmp / "pipeline.json").read_text())}
            (tmp / "pipeline.json").write_text(json.dumps(info, indent=2) + "\n")
        cls.from_pretrained(tmp)  # loads back
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)
    return dst


if __name__ == "__main__":  # an entry point, not a dependency: the command is codeclm/cli/export.py
    import runpy

    runpy.run_module("codeclm.cli.export", run_name="__main__", alter_sys=True)
