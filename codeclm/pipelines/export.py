"""Ship a trained pipeline folder: :func:`export`; on the command line ``codeclm export SRC DST``
or ``python -m codeclm.pipelines.export SRC DST [--dtype float16]`` (both: :mod:`codeclm.cli.export`).

    python -m codeclm.pipelines.export runs/lm_music/model checkpoints/music \
        --checkpoint runs/lm_music/checkpoints/step_001750      # the weights of an earlier step

Reads the folder a training run exports (``runs/lm_music/model``: text-to-music,
``runs/valle/model``: voice-clone), loads it as its pipeline (so a broken export fails here, not
for users) and writes it again with the LM/VALL-E and codec weights in ``--dtype`` (fp16 by
default: half the size; they are computed in fp32 on load). ``--checkpoint STEP_DIR`` takes the
weights of a training checkpoint instead of the folder's (each ``NAME/`` part of the folder from
``STEP_DIR/NAME.safetensors``), e.g. the step with the best validation loss. ``--codec FOLDER``
ships another codec that gives the same codes (e.g. another decoder fine-tune of a codec whose
encoder and quantizer were frozen): refused unless it encodes a set of test signals to exactly the
codes of the folder's own codec. DST is written to a temporary folder beside it and renamed, so an
interrupted export leaves no half-written model.
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


def _probe_signals(sample_rate: int, channels: int) -> list[torch.Tensor]:
    """Test signals ``[1, C, T]`` (2 s each): a harmonic chirp with a vibrato, noise, silence."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(2 * sample_rate) / sample_rate
    f0 = 110.0 * 2 ** (2 * t / 2) * (1 + 0.01 * torch.sin(2 * torch.pi * 5 * t))
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sample_rate
    chirp = sum(0.3 / k * torch.sin(k * phase) for k in range(1, 9))
    noise = 0.1 * torch.randn(t.shape, generator=g)
    return [x.expand(1, channels, -1).contiguous() for x in (chirp, noise, torch.zeros_like(t))]


def swap_codec(pipe, codec_folder: str | Path) -> None:
    """Give ``pipe`` the codec of ``codec_folder`` if it encodes exactly as the pipeline's own
    (same sample rate, channels, frame rate, and the same codes in the LM's codebooks on every
    probe signal), so the LM's tokens keep their meaning; otherwise a ConfigError naming the folder."""
    from codeclm.codec import load_model

    new, old = load_model(codec_folder), pipe.codec
    where = f"--codec {codec_folder}"
    for name in ("sample_rate", "channels", "frame_rate"):
        if getattr(new, name) != getattr(old, name):
            raise ConfigError(f"{where}: {name} {getattr(new, name)} differs from the model's codec ({getattr(old, name)})")
    n_q = pipe.lm.config.n_q  # fewer codebooks than the LM's: fewer rows, so not the same codes
    with torch.no_grad():
        for i, x in enumerate(_probe_signals(old.sample_rate, old.channels)):
            a, b = old.encode(x)[:, :n_q], new.encode(x)[:, :n_q]
            if not torch.equal(a, b):
                raise ConfigError(f"{where}: does not give the codes of the model's codec (probe signal {i}): "
                                  f"its tokens would mean something else to the LM")
    pipe.codec = new.to(next(old.parameters()).device)


def export(src: str | Path, dst: str | Path, dtype: str = "float16", force: bool = False,
           checkpoint: str | Path | None = None, codec: str | Path | None = None) -> Path:
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
        if codec is not None:
            swap_codec(pipe, codec)
        pipe.save_pretrained(tmp, DTYPES[dtype])
        if kind == "text-to-music":  # keep the training run's description (pattern, bandwidth, ...)
            info = {**json.loads((src / "pipeline.json").read_text()), **json.loads((tmp / "pipeline.json").read_text())}
            info["codec"] = "codec"  # the folder's own copy (the run's field is the path it was copied from)
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
