"""Training recipes: a YAML file + ``key=value`` overrides, checked against typed dataclasses.

    cfg = load_recipe("recipes/codec_tiny.yaml", ["out_dir=runs/x", "max_steps=20", "optim.lr=1e-3"])

The schema is :class:`TrainConfig` (what every task shares: output folder, steps, seed, optimizer,
schedule, data) extended by the task named in the recipe's ``task:`` key with its ``model:``
section and its own options (``codeclm.training.codec_task.Recipe`` for ``task: codec``,
``codeclm.training.lm_task.Recipe`` for ``task: lm``).
Every value has one visible source: the dataclass default, the YAML file, or the command line,
merged in that order by OmegaConf. An unknown key, a value of the wrong type or an impossible
setting raises :class:`codeclm.errors.ConfigError` with one line naming the key and the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from codeclm.errors import ConfigError

# task name -> module defining `Recipe` (a TrainConfig subclass) and `Task` (see trainer.py)
TASKS = {"codec": "codeclm.training.codec_task", "frame_codec": "codeclm.training.frame_codec_task",
         "lm": "codeclm.training.lm_task", "valle": "codeclm.training.valle_task",
         "valle_dur": "codeclm.training.valle_dur_task"}


@dataclass
class DataConfig:
    """Audio data. ``train_manifest: null`` trains on synthetic tones (smoke tests)."""

    train_manifest: str | None = None
    valid_manifest: str | None = None  # null: hold out valid_fraction of train_manifest by file hash
    valid_fraction: float = 0.1
    valid_items: int = 16  # at most this many validation segments
    segment_seconds: float = 1.0
    batch_size: int = 8  # per process; the global batch is batch_size * processes * grad_accum
    num_workers: int = 0
    synthetic_items: int = 64  # size of the synthetic training set when train_manifest is null


@dataclass
class OptimConfig:
    """AdamW for every optimizer of the task; LR schedule over optimizer steps."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (both with linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 0.0  # max gradient norm, 0 = no clipping
    # parameter-name prefix -> LR multiplier, e.g. {"harmonic": 5.0}: a branch added to a trained
    # model (init_from) learns at its own rate; the longest matching prefix wins, the rest keeps 1.0.
    # Names are those of the task's trained model (the codec's generator; the LM task's "lm.",
    # "text.", ... conditioners; VALL-E's model), never the codec's discriminator
    lr_mult: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """What every training run has, whatever the model."""

    task: str = "codec"
    out_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    resume: str = "auto"  # auto: latest checkpoint in out_dir if any | never | a checkpoint folder
    # an exported model folder of this task (``python -m codeclm.pipelines.export``, e.g. a shipped
    # checkpoints/ folder) whose weights start a fresh run: fine-tuning with a new optimizer and LR
    # schedule. A run that resumes from its own checkpoint ignores it (the checkpoint wins)
    init_from: str | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16 | auto (bf16 where the hardware has it, else fp32)
    grad_accum: int = 1
    ema_decay: float = 0.0  # weight EMA of the task's main model, 0 = off
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn_only)
    log_every: int = 10
    valid_every: int = 500  # 0 = never (validation also runs at the end)
    ckpt_every: int = 500  # 0 = only at the end
    keep_last: int = 3
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def _check(cfg: TrainConfig) -> None:
    import dataclasses
    import math

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"recipe: {msg}")

    def finite(value: Any, key: str) -> None:
        """Every float of the recipe (any section, lists included) is a finite number: NaN and inf
        pass YAML and the type checks, and every comparison with NaN is False."""
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                finite(getattr(value, f.name), f"{key}{f.name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                finite(v, f"{key}{k}.")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                finite(v, f"{key[:-1]}[{i}].")
        elif isinstance(value, float) and not math.isfinite(value):
            raise bad(f"{key[:-1]} must be a finite number, got {value}")

    finite(cfg, "")
    if cfg.max_steps <= 0 or cfg.grad_accum <= 0 or cfg.log_every <= 0:
        raise bad(f"max_steps, grad_accum and log_every must be positive "
                  f"(got {cfg.max_steps}, {cfg.grad_accum}, {cfg.log_every})")
    if cfg.valid_every < 0 or cfg.ckpt_every < 0 or cfg.keep_last < 1:
        raise bad("valid_every and ckpt_every must be >= 0 and keep_last >= 1")
    if cfg.mixed_precision in ("False", "false"):  # YAML 1.1 reads `no` as a boolean, in files and overrides
        cfg.mixed_precision = "no"
    if cfg.mixed_precision not in ("no", "bf16", "fp16", "auto"):
        raise bad(f"mixed_precision must be no, bf16, fp16 or auto, got {cfg.mixed_precision!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise bad(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if not cfg.out_dir:
        raise bad("out_dir must not be empty")
    if cfg.init_from is not None and not Path(cfg.init_from).expanduser().is_dir():
        raise bad(f"init_from: {cfg.init_from}: no such model folder")
    o, d = cfg.optim, cfg.data
    if o.schedule not in ("constant", "cosine"):
        raise bad(f"optim.schedule must be constant or cosine, got {o.schedule!r}")
    if o.lr <= 0 or o.warmup_steps < 0 or o.grad_clip < 0 or not 0 <= o.min_lr_ratio <= 1 or len(o.betas) != 2:
        raise bad("optim: lr must be > 0, warmup_steps and grad_clip >= 0, min_lr_ratio in [0, 1], two betas")
    if d.batch_size <= 0 or d.segment_seconds <= 0 or d.num_workers < 0 or d.synthetic_items <= 0:
        raise bad("data: batch_size, segment_seconds and synthetic_items must be positive, num_workers >= 0")
    if not 0 <= d.valid_fraction < 1 or d.valid_items < 0:
        raise bad("data: valid_fraction must be in [0, 1) and valid_items >= 0")


def recipe_class(task: str) -> type:
    if task not in TASKS:
        raise ConfigError(f"recipe: unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[task]).Recipe


def _unknown_keys(schema: DictConfig, given: Any, where: str, prefix: str = "") -> None:
    """Raise on the first key of ``given`` that the schema does not have (recursively)."""
    if not isinstance(given, DictConfig):
        return
    for key in given:
        full = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(str(k) for k in schema)
            section = f" under '{prefix[:-1]}'" if prefix else ""
            raise ConfigError(f"unknown key '{full}' {where}; valid keys{section}: {valid}")
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and child._metadata.object_type not in (None, dict):
            _unknown_keys(child, given._get_node(key), where, f"{full}.")


RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"  # the source checkout's recipes/


def find_recipe(name: str | Path) -> Path:
    """The recipe file ``name``: a path (with or without ``.yaml``), else a recipe name from
    ``./recipes`` or the checkout's ``recipes/`` (``codec_tiny`` or ``codec_tiny.yaml``)."""
    given = Path(name)
    names = [given.name] + ([f"{given.name}.yaml"] if given.name and given.suffix != ".yaml" else [])
    candidates = [given.with_name(n) for n in names] if given.name else [given]
    if given.name and given.name == str(name):  # a bare name: look in the recipe folders too
        candidates += [folder / n for folder in (Path("recipes"), RECIPES_DIR) for n in names]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    hint = f"; recipes in {RECIPES_DIR}: {', '.join(known)}" if known else ""
    raise ConfigError(f"{name}: recipe file not found{hint}")


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a recipe (a file or a recipe name, see :func:`find_recipe`; None: defaults + overrides
    only) and apply ``key=value`` overrides."""
    try:
        for item in overrides:
            if "=" not in item or item.startswith("="):
                raise ConfigError(f"override {item!r} is not key=value")
        cli = OmegaConf.from_dotlist(list(overrides))
        if path is None:
            raw = OmegaConf.create({})
        else:
            path = find_recipe(path)
            raw = OmegaConf.load(path)
            if not isinstance(raw, DictConfig):
                raise ConfigError(f"{path}: a recipe must be a YAML mapping")
        task = cli.get("task", raw.get("task", TrainConfig.task))
        schema = OmegaConf.structured(recipe_class(str(task)))
        _unknown_keys(schema, raw, f"in {path}")
        _unknown_keys(schema, cli, "on the command line")
        cfg = OmegaConf.to_object(OmegaConf.merge(schema, raw, cli))
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"recipe: {key + ': ' if key else ''}{msg}") from None
    except (TypeError, ValueError) as exc:  # raised by a dataclass' __post_init__
        raise ConfigError(f"recipe: {str(exc).splitlines()[0]}") from None
    _check(cfg)
    if hasattr(cfg, "validate_task"):
        cfg.validate_task()
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved recipe, as written to ``out_dir/recipe.yaml`` for the record."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
