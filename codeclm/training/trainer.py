"""The one training loop of codeclm, on Hugging Face Accelerate (1 process, N processes, N machines).

A *task* (``codeclm.training.codec_task.Task`` for ``task: codec``, all subclasses of
``codeclm.training.task.Task``, which writes prepare, state, clip/step/zero and the sharded
validation loop once) owns the models, the optimizers, the datasets and what one step computes;
this file owns everything around it: processes and devices, seeding, the data order, LR
schedules, weight EMA, logging, validation, checkpoints and resume. A task provides::

    models: dict[str, nn.Module]         # checkpointed (unwrapped modules)
    optimizers: dict[str, Optimizer]     # one LR schedule each (StepSchedule: a function of the step)
    ema_model: str | None                # the model the weight EMA follows (and export uses)
    train_set, valid_set, collate        # map-style datasets of dicts, a collate function
    prepare(accelerator) -> list         # wrap models/optimizers (DDP, mixed precision); the wrapped models
    attach_logger(logger)                # the task's own log lines go to the run logger
    train_step(batch, step) -> dict      # forward/backward/optimizer steps, scalars to log
    validate(model, batch_size) -> dict  # metrics, reduced across processes
    log_audio(model, logger, step)       # a few clips (TensorBoard, or WAV files without it; main process)
    export(model, folder)                # the released model folder (main process)
    state_dict() / load_state_dict()     # extra state to checkpoint (balancer, seeded generators)

Exact resume: the data order is a permutation seeded by (seed, epoch) and cut per process;
a checkpoint records the epoch and the next batch, so a resumed run reads exactly the batches
the uninterrupted run would have read, with the same RNG, optimizer and EMA states.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Sampler

from codeclm.errors import ConfigError
from codeclm.threads import cpu_has_native_bf16
from codeclm.training.checkpoint import Position, latest_checkpoint, load_checkpoint, save_checkpoint
from codeclm.training.config import TASKS, TrainConfig, to_yaml
from codeclm.training.logging import RunLogger


class EpochBatches(Sampler):
    """One process' batches of one epoch: a permutation seeded by (seed, epoch), cut into global
    batches of ``batch_size * world`` (the incomplete last one dropped), this rank's slice of each,
    starting at batch ``start``."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int, start: int = 0):
        self.n, self.bs, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.epoch, self.start = seed, epoch, start
        if n < batch_size * world:
            raise ConfigError(f"data: {n} training items cannot fill one batch of {batch_size} x {world} processes")

    def __len__(self) -> int:
        return max(0, self.n // (self.bs * self.world) - self.start)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        per_global = self.bs * self.world
        for b in range(self.start, self.n // per_global):
            first = b * per_global + self.rank * self.bs
            yield order[first:first + self.bs].tolist()


def batch_stream(task, cfg: TrainConfig, accelerator: Accelerator, epoch: int, start: int):
    """Endless ``(epoch, index, batch)``; the next position after it is ``(epoch, index + 1)``."""
    while True:
        if hasattr(task.train_set, "set_epoch"):
            task.train_set.set_epoch(epoch)
        sampler = EpochBatches(len(task.train_set), cfg.data.batch_size, accelerator.process_index,
                               accelerator.num_processes, cfg.seed, epoch, start)
        # its own generator: a DataLoader iterator draws a seed, which must not come from the global RNG
        loader = DataLoader(task.train_set, batch_sampler=sampler, collate_fn=task.collate,
                            num_workers=cfg.data.num_workers, pin_memory=accelerator.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed + 100_003 * epoch))
        for index, batch in enumerate(loader, start):
            yield epoch, index, batch
        epoch, start = epoch + 1, 0


def lr_lambda(cfg: TrainConfig):
    """LR multiplier after ``s`` optimizer steps: linear warmup, then constant or cosine decay."""
    o = cfg.optim

    def factor(s: int) -> float:
        if s < o.warmup_steps:
            return (s + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (s - o.warmup_steps) / max(1, cfg.max_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class StepSchedule:
    """The learning rate of one optimizer as a function of the trainer's step: the updates made in
    step ``s + 1`` use ``base_lr * lr_lambda(s)``, for every optimizer alike, also one that does not
    update at every step (the discriminator before ``codec.disc_start_step`` or when ``disc_prob``
    skips it, an fp16 step the loss scaler skips). The trainer sets it before each step, so it
    never depends on how often ``optimizer.step`` ran; torch's ``LambdaLR`` stepped once per trainer
    step warned "Detected call of lr_scheduler.step() before optimizer.step()" for a discriminator
    that starts late. The state dict is a ``LambdaLR``'s (``base_lrs``, ``last_epoch`` = steps
    done), so checkpoints written with either load with the other."""

    def __init__(self, optimizer, factor):
        self.optimizer, self.factor = optimizer, factor
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.set(0)

    def set(self, step: int) -> None:
        """The learning rates for step ``step + 1`` (``step`` steps done)."""
        self.last_epoch = int(step)
        self.last_lr = [base * self.factor(self.last_epoch) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self.last_lr):
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch, "_step_count": self.last_epoch + 1,
                "_is_initial": False, "_get_lr_called_within_step": False, "_last_lr": list(self.last_lr),
                "lr_lambdas": [None]}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.set(state["last_epoch"])


class ModelEMA:
    """Exponential moving average of a module's parameters (buffers, e.g. codebooks, are taken
    from the live model when a copy is made)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1 - self.decay)

    def copy_of(self, model: torch.nn.Module) -> torch.nn.Module:
        ema = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in ema.named_parameters():
                p.copy_(self.shadow[k])
        return ema

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def resolve_precision(requested: str, has_gpu: bool) -> tuple[str, str | None]:
    """The precision a run uses and a note for the log: ``auto`` is bf16 where it is fast (a GPU
    with bf16, or a CPU with native bf16), else fp32; fp16 on a CPU becomes bf16."""
    if requested == "auto":
        if has_gpu:
            return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), None
        if cpu_has_native_bf16():
            return "bf16", None
        return "no", "mixed_precision=auto: this CPU has no native bf16 (AMX/AVX512-BF16), training in fp32"
    if not has_gpu and requested == "fp16":  # CPU fp16 autocast is slow and needs a loss scaler
        requested = "bf16"
        note = "mixed_precision=fp16 needs a GPU; training with bf16 autocast on CPU"
        return requested, note + ("" if cpu_has_native_bf16() else " (emulated here: slower than fp32)")
    if not has_gpu and requested == "bf16" and not cpu_has_native_bf16():
        return "bf16", ("warning: this CPU has no native bf16 (AMX/AVX512-BF16): bf16 autocast is emulated and "
                        "much slower than fp32; use mixed_precision=auto or no")
    return requested, None


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def make_accelerator(cfg: TrainConfig, out_dir: Path) -> tuple[Accelerator, str | None]:
    has_gpu = torch.cuda.is_available()
    mixed, note = resolve_precision(cfg.mixed_precision, has_gpu)
    accelerator = Accelerator(
        cpu=not has_gpu,  # on a CPU-only host this makes torchrun/`accelerate launch --multi_gpu` use gloo
        gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mixed,
        log_with="tensorboard" if tensorboard_available() else None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir)))
    return accelerator, note


def state_hash(models: dict[str, torch.nn.Module]) -> str:
    h = hashlib.sha256()
    for name, model in sorted(models.items()):
        for key, t in sorted(model.state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the recipe ``cfg``; returns ``out_dir``."""
    out_dir = Path(cfg.out_dir)
    accelerator, precision_note = make_accelerator(cfg, out_dir)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (GPU only)
        torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(cfg.seed)  # the same initial weights in every process
    if cfg.resume == "never" and latest_checkpoint(out_dir) is not None:
        raise ConfigError(f"{out_dir} already holds checkpoints: use resume=auto or another out_dir")
    ckpt = None if cfg.resume == "never" else latest_checkpoint(out_dir) if cfg.resume == "auto" else Path(cfg.resume)
    task = importlib.import_module(TASKS[cfg.task]).Task(cfg, accelerator)
    if cfg.init_from and ckpt is None:  # a fresh run starts from an export; a resumed one from its checkpoint
        task.init_from_export(cfg.init_from)
    wrapped_models = task.prepare(accelerator)
    set_seed(cfg.seed, device_specific=True)  # from here on each process draws its own numbers
    schedulers = {name: StepSchedule(opt, lr_lambda(cfg)) for name, opt in task.optimizers.items()}
    ema_target = task.models[task.ema_model] if cfg.ema_decay > 0 and task.ema_model else None
    ema = ModelEMA(ema_target, cfg.ema_decay) if ema_target is not None else None

    # -- resume ---------------------------------------------------------------------------------
    pos = Position()
    if ckpt is not None:
        pos, state = load_checkpoint(ckpt, accelerator, task.models)
        for name, opt in task.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            schedulers[name].load_state_dict(state["schedulers"][name])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        task.load_state_dict(state["task"])

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.yaml").write_text(to_yaml(cfg))
    if tensorboard_available():
        tb_kwargs = {"purge_step": pos.step + 1} if pos.step else {}
        accelerator.init_trackers("tb", init_kwargs={"tensorboard": tb_kwargs})
    samples_per_step = cfg.data.batch_size * accelerator.num_processes * cfg.grad_accum
    log = RunLogger(accelerator, out_dir, cfg.max_steps, pos.step, samples_per_step // cfg.grad_accum)
    task.attach_logger(log)  # the task's own lines (data sizes, ...) go to the same log
    if precision_note:
        log.info(precision_note)
    if not tensorboard_available():
        log.info("TensorBoard is not installed: metrics go to metrics.jsonl and audio clips to "
                 f"{out_dir / 'audio'}; pip install 'codeclm[train]' for TensorBoard logs")
    log.info(f"{cfg.task}: {accelerator.num_processes} process(es) on {accelerator.device}, "
             f"{samples_per_step} samples/step, " + (f"resuming from {ckpt}" if ckpt else f"from {cfg.init_from}" if cfg.init_from else "from scratch"))

    def eval_model():
        return ema.copy_of(ema_target) if ema is not None else task.models[task.ema_model]

    def checkpoint() -> None:
        state = {"optimizers": {n: o.state_dict() for n, o in task.optimizers.items()},
                 "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                 "ema": ema.state_dict() if ema is not None else None, "task": task.state_dict()}
        save_checkpoint(accelerator, out_dir, pos, task.models, state, cfg.keep_last)
        if accelerator.is_main_process:
            task.export(eval_model(), out_dir / "model")

    def validate() -> None:
        with torch.random.fork_rng(devices=[]):  # validation must not move the training RNG
            model = eval_model()
            metrics = task.validate(model, cfg.data.batch_size)
            if metrics:
                log.write(pos.step, {f"valid/{k}": v for k, v in metrics.items()})
                log.info(f"step {pos.step}: " + ", ".join(f"valid/{k} {v:.4g}" for k, v in metrics.items()))
                if accelerator.is_main_process:
                    task.log_audio(model, log, pos.step)

    # -- the loop -------------------------------------------------------------------------------
    data = batch_stream(task, cfg, accelerator, pos.epoch, pos.batch)
    timed_steps, timed_seconds, start_step = 0, 0.0, pos.step
    while pos.step < cfg.max_steps:
        t0 = time.perf_counter()
        for scheduler in schedulers.values():  # the LR of this step's updates (exact after a resume too)
            scheduler.set(pos.step)
        lrs = {f"lr/{n}": s.last_lr[0] for n, s in schedulers.items()}
        for _ in range(cfg.grad_accum):
            epoch, index, batch = next(data)
            with accelerator.accumulate(*wrapped_models):
                logs = task.train_step(batch, pos.step)
            log.add(logs)
        pos = Position(pos.step + 1, epoch, index + 1)
        for scheduler in schedulers.values():  # checkpointed: the LR of the next step
            scheduler.set(pos.step)
        if ema is not None:
            ema.update(ema_target)
        if pos.step - start_step > 2:  # the first steps pay for k-means init and warm caches
            timed_steps, timed_seconds = timed_steps + 1, timed_seconds + time.perf_counter() - t0
        log.advance()
        if pos.step % cfg.log_every == 0 or pos.step == cfg.max_steps:
            log.log_step(pos.step, lrs)  # the LR this step used
        if cfg.valid_every and pos.step % cfg.valid_every == 0 and pos.step < cfg.max_steps:
            validate()
        if cfg.ckpt_every and pos.step % cfg.ckpt_every == 0 and pos.step < cfg.max_steps:
            checkpoint()

    # -- the end --------------------------------------------------------------------------------
    if start_step < cfg.max_steps:
        validate()
        checkpoint()
    (out_dir / f"state_hash.rank{accelerator.process_index}.txt").write_text(state_hash(task.models) + "\n")
    if accelerator.is_main_process:
        speed = timed_steps * samples_per_step / timed_seconds if timed_seconds else None
        summary = {"steps": pos.step, "steps_this_run": pos.step - start_step, "processes": accelerator.num_processes,
                   "samples_per_step": samples_per_step, "samples_per_s": speed}
        (out_dir / "train_summary.json").write_text(json.dumps(summary) + "\n")
        log.info(f"done: {pos.step} steps; model in {out_dir / 'model'}")
    log.close()
    accelerator.end_training()
    return out_dir
