"""The base of every training task (what AudioCraft's ``StandardSolver`` is to its solvers).

The trainer (``codeclm.training.trainer``) owns processes, data order, LR schedules, weight EMA,
checkpoints and resume; a task owns its models and what one step computes. What every task
needs around that is written here once:

* ``prepare``: one ``accelerator.prepare`` of every model and optimizer (DDP, mixed precision);
  ``self.wrapped[name]`` are the prepared models, the ones whose forward a training step calls
  (under several processes only a wrapped module's forward synchronises gradients).
* ``state_dict`` / ``load_state_dict``: the seeded generator ``self.rng`` (the same draws on every
  process: codebook counts, condition dropout, prompts) and whatever :meth:`extra_state` adds.
* ``optimizer_step(name)``: clip the optimizer's gradients (``optim.grad_clip``, once the
  accumulated micro-batches are synchronised), step, zero.
* ``validate``: the rank-sharded loop (this process' share of the validation set, in batches),
  summed and all-reduced; a task gives the sums of one batch (:meth:`validation_sums`) and turns
  the totals into metrics (:meth:`validation_metrics`).
* ``info``: a line through the run logger (stderr, main process), never ``print``.

A task subclass sets ``models``, ``optimizers`` (see :meth:`adamw`), ``ema_model``,
``train_set``, ``valid_set``, ``collate`` in ``__init__`` and implements ``train_step``,
``validation_sums``/``validation_metrics`` (or ``validate``), ``export`` and, if it has clips
to show, ``log_audio``. ``init_from`` (a fresh run started from an export) loads each model's
``model.safetensors`` from the export's subfolder that :meth:`export_parts` names. The names in ``models``, ``optimizers`` and the state dict are what a
checkpoint stores: renaming one breaks resuming older runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from codeclm.errors import ConfigError


def held_out(path: str, fraction: float) -> bool:
    """Whether the token-cache record of the audio file ``path`` is held out for validation: a
    hash of the full path below ``fraction``, so membership is stable whatever else the cache holds.

    (Audio manifests are split by :func:`codeclm.data.split_held_out`, which hashes only the
    file's folder/name; the two rules are kept apart so that no existing split changes.)"""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def lr_groups(module: nn.Module, lr: float, lr_mult: dict[str, float]) -> list[dict]:
    """``module``'s parameters as AdamW groups: one at ``lr`` and one per prefix of
    ``lr_mult`` at ``lr * mult`` (the longest matching prefix wins). A prefix that names no
    parameter is a recipe error, not a silent no-op."""
    for prefix, mult in lr_mult.items():
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or not mult > 0:
            raise ConfigError(f"recipe: optim.lr_mult[{prefix!r}] must be a positive number, got {mult!r}")
    groups: dict[str, list] = {"": []}
    order = sorted(lr_mult, key=len, reverse=True)
    for name, p in module.named_parameters():  # frozen ones too: the same order as module.parameters()
        key = next((k for k in order if name.startswith(k)), "")
        groups.setdefault(key, []).append(p)
    unused = [k for k in lr_mult if not groups.get(k)]
    if unused:
        raise ConfigError(f"recipe: optim.lr_mult: no parameter name starts with {unused[0]!r}")
    return [{"params": ps, "lr": lr * (lr_mult[k] if k else 1.0)} for k, ps in groups.items() if ps]


class Task:
    """Shared machinery of the codec, LM and VALL-E tasks (see the module docstring)."""

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_model: str | None = None
    valid_set = None

    def __init__(self, cfg, accelerator):
        self.cfg, self.acc = cfg, accelerator
        # one generator with the same seed on every process: every process makes the same draws
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.logger = None
        self._pending: list[str] = []

    # -- logging ----------------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        """One line in the run's log (held back until the trainer attaches its logger)."""
        if self.logger is not None:
            self.logger.info(msg)
        else:
            self._pending.append(msg)

    def attach_logger(self, logger) -> None:
        self.logger = logger
        for msg in self._pending:
            logger.info(msg)
        self._pending.clear()

    # -- setup / state ----------------------------------------------------------------------------
    def adamw(self, params) -> torch.optim.AdamW:
        """The recipe's AdamW (``optim.lr``, ``betas``, ``weight_decay``) over ``params``: a module
        (each task passes its trained model this way), whose parameters named with a prefix of
        ``optim.lr_mult`` get their own group at ``lr * mult``, or an iterable of parameters (one
        group: the codec's discriminator). The schedule scales every group alike."""
        o = self.cfg.optim
        if isinstance(params, nn.Module):
            params = lr_groups(params, o.lr, o.lr_mult) if o.lr_mult else params.parameters()
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def prepare(self, accelerator) -> list[nn.Module]:
        """Wrap every model and optimizer in one ``accelerator.prepare``; returns the wrapped models."""
        names, opt_names = list(self.models), list(self.optimizers)
        out = accelerator.prepare(*(self.models[n] for n in names), *(self.optimizers[n] for n in opt_names))
        self.wrapped = dict(zip(names, out[: len(names)]))
        self.optimizers = dict(zip(opt_names, out[len(names):]))
        return list(self.wrapped.values())

    def export_parts(self) -> dict[str, str]:
        """Model name -> the subfolder of an export holding its weights (what :meth:`export` writes
        and :meth:`init_from_export` reads back); by default the model's own name."""
        return {name: name for name in self.models}

    def init_from_export(self, folder: str | Path) -> None:
        """Start from the weights of an exported model folder of this task (recipe ``init_from``):
        every model of :meth:`export_parts`, strictly (same keys and shapes, so the recipe's model
        section must describe the exported architecture). Called before ``prepare`` and the EMA copy."""
        from codeclm.pretrained import load_weights_into, read_weights

        folder = Path(folder).expanduser()
        for name, sub in self.init_parts().items():
            part = folder / sub
            if not part.is_dir():
                raise ConfigError(f"recipe: init_from {folder}: missing {sub}/ (the {name} model); "
                                  f"is it an export of task {self.cfg.task}?")
            weights = self.remap_export_weights(name, read_weights(part), part)
            load_weights_into(self.models[name], weights, f"recipe: init_from {part}")
        self.info(f"weights from {folder} ({', '.join(self.init_parts().values())})")

    def init_parts(self) -> dict[str, str]:
        """The parts of :meth:`export_parts` that ``init_from`` loads (a task whose recipe can add
        models the export has not, e.g. a new condition, leaves those out); by default all."""
        return self.export_parts()

    def remap_export_weights(self, name: str, weights: dict, folder: Path) -> dict:
        """The exported weights of model ``name`` as this run's model names them (a task whose
        recipe can map an export's parts onto other positions overrides this); by default as they are."""
        return weights

    def extra_state(self) -> dict:
        """More checkpointed state of a task (its keys must never change)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state(), **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])
        self.load_extra_state(state)

    # -- one step ---------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def optimizer_step(self, name: str) -> None:
        """Clip (``optim.grad_clip`` > 0, on the step that syncs the accumulated gradients), step and
        zero the optimizer ``name``."""
        opt = self.optimizers[name]
        if self.acc.sync_gradients and self.cfg.optim.grad_clip > 0:
            self.acc.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- validation -------------------------------------------------------------------------------
    def valid_batches(self, batch_size: int) -> Iterator[dict]:
        """This process' share of the validation set (items rank, rank + world, ...), collated."""
        if self.valid_set is None:
            return
        indices = list(range(self.acc.process_index, len(self.valid_set), self.acc.num_processes))
        for i in range(0, len(indices), batch_size):
            yield self.collate([self.valid_set[j] for j in indices[i:i + batch_size]])

    def eval_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules switched to eval mode during validation (``model``: the one validated)."""
        return [model]

    validation_width = 0  # the length of validation_sums' vector

    def validation_sums(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Float64 sums ``[validation_width]`` of one validation batch."""
        raise NotImplementedError

    def validation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """Metrics from the sums over the whole validation set (all processes)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        """Metrics over the whole validation set: each process its share, sums all-reduced."""
        if self.valid_set is None:
            return {}
        acc = self.acc
        sums = torch.zeros(self.validation_width, dtype=torch.float64, device=acc.device)
        modules = self.eval_modules(model)
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            for batch in self.valid_batches(batch_size):
                sums += self.validation_sums(model, batch).to(device=acc.device, dtype=torch.float64)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        if acc.num_processes > 1:
            sums = acc.reduce(sums, reduction="sum")
        return self.validation_metrics(sums)

    def log_audio(self, model: nn.Module, logger, step: int) -> None:
        """A few clips through ``logger.audio`` (main process); nothing by default."""

    def export(self, model: nn.Module, folder) -> None:
        raise NotImplementedError
