"""Codec training (EnCodec recipe): the task the trainer runs for ``task: codec``.

Per step: quantizer dropout picks the number of codebooks, the generator (a :class:`Codec` with
weight norm) reconstructs the batch; the multi-scale STFT discriminator takes a hinge step on
real vs. reconstructed audio; then the generator gets time-domain L1 + multi-scale mel +
adversarial hinge + feature matching, combined by EnCodec's gradient balancer on the decoded
waveform, plus the commitment loss added directly. ``disc_start_step`` trains without the
adversary first (cheap on CPU); ``adv_weight = feat_weight = 0`` drops the discriminator.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from codeclm.codec import Codec, CodecConfig
from codeclm.data import AudioSegmentDataset, collate_audio, read_manifest, split_held_out
from codeclm.errors import ConfigError
from codeclm.training.balancer import Balancer
from codeclm.training.config import TrainConfig
from codeclm.training.discriminator import Discriminators, MultiPeriodDiscriminator, MultiScaleSTFTDiscriminator
from codeclm.training.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    PhaseDerivativeLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from codeclm.training.task import Task as BaseTask

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CodecTaskConfig:
    """The ``codec:`` section of a recipe."""

    l1_weight: float = 0.1
    mel_weight: float = 2.0
    adv_weight: float = 4.0  # adv_weight = feat_weight = 0: no discriminator at all
    feat_weight: float = 4.0
    commit_weight: float = 1.0  # added to the generator loss directly, outside the balancer
    aux_weight: float = 1.0  # the generator's own losses (CodecOutput.aux_losses, e.g. the frame codec's
    #                          pitch loss), added directly like the commitment loss
    balancer: bool = True  # false: plain weighted sum of the losses
    balancer_ema: float = 0.999
    mel_loss: str = "encodec"  # encodec (linear L1 + log MSE, 64 mels) | dac (log L1)
    phase_weight: float = 0.0  # > 0: PhaseDerivativeLoss (instantaneous frequency + group delay) in the balancer:
    #                            what teaches a per-frame phase head coherent harmonics without the adversary
    phase_windows: list[int] = field(default_factory=lambda: [512, 1024])
    stft_weight: float = 0.0  # > 0: multi-resolution linear-frequency STFT loss (spectral convergence + log
    #                           magnitude) in the balancer: it sees a narrow spectral line that mel bands average away
    stft_windows: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    quantizer_dropout: bool = True  # a random bandwidth per step; false: always every codebook
    disc_filters: int = 32
    disc_n_ffts: list[int] = field(default_factory=lambda: [1024, 2048, 512])  # [] with disc_periods: periods only
    disc_periods: list[int] = field(default_factory=list)  # HiFi-GAN's multi-period discriminator beside the
    #                                                        MS-STFT one (e.g. [2, 3, 5, 7, 11]); [] = none
    disc_period_filters: int = 16  # its first layer's width (HiFi-GAN: 32; layers x 1, 4, 16, 32)
    disc_start_step: int = 0  # generator-only warm-up steps
    disc_prob: float = 1.0  # probability of a discriminator update per step
    export_dtype: str | None = None  # float16 | bfloat16: also write out_dir/model_<dtype>
    init_from: str | None = None  # a codec folder of the same architecture to start from (fine-tuning)
    teacher_f0: float = 0.0  # frame codec with harmonics: share of steps whose oscillator plays the input's pitch
    freeze: list[str] = field(default_factory=list)  # generator submodules kept as they are (e.g. frontend,
    #                                      encoder, quantizer: a new decoder for the same codes, as Vocos for EnCodec)
    log_audio: int = 2  # validation clips sent to TensorBoard


@dataclass
class Recipe(TrainConfig):
    model: CodecConfig = field(default_factory=CodecConfig)
    codec: CodecTaskConfig = field(default_factory=CodecTaskConfig)

    def validate_task(self) -> None:
        c = self.codec
        if self.init_from:
            raise ConfigError("recipe: init_from: a codec run starts from a codec folder with codec.init_from "
                              "(which also accepts a folder with other quantizer layers)")
        weights = (c.l1_weight, c.mel_weight, c.adv_weight, c.feat_weight, c.commit_weight, c.aux_weight, c.phase_weight,
                   c.stft_weight)
        if min(weights) < 0 or c.l1_weight + c.mel_weight <= 0:
            raise ConfigError("recipe: codec loss weights must be >= 0 with l1_weight + mel_weight > 0")
        if not 0 <= c.teacher_f0 <= 1:
            raise ConfigError(f"recipe: codec.teacher_f0 must be in [0, 1], got {c.teacher_f0}")
        if c.teacher_f0 and not getattr(self.model, "harmonics", 0):
            raise ConfigError("recipe: codec.teacher_f0 needs a frame codec with a harmonic branch (model.harmonics > 0)")
        if c.mel_loss not in ("encodec", "dac") or not 0 <= c.disc_prob <= 1 or not 0 <= c.balancer_ema < 1:
            raise ConfigError("recipe: codec.mel_loss must be encodec or dac, disc_prob and balancer_ema in [0, 1]")
        for name, weight, windows in (("phase", c.phase_weight, c.phase_windows), ("stft", c.stft_weight, c.stft_windows)):
            if weight and (not windows or any(not isinstance(w, int) or w < 16 for w in windows)):
                raise ConfigError(f"recipe: codec.{name}_windows must be STFT window sizes >= 16, got {windows!r}")
        if c.export_dtype is not None and c.export_dtype not in _DTYPES:
            raise ConfigError(f"recipe: codec.export_dtype must be null, float16 or bfloat16, got {c.export_dtype!r}")
        if (c.adv_weight or c.feat_weight) and not (c.disc_n_ffts or c.disc_periods):
            raise ConfigError("recipe: the adversary needs codec.disc_n_ffts or codec.disc_periods "
                              "(or adv_weight = feat_weight = 0)")
        if any(not isinstance(p, int) or p < 1 for p in c.disc_periods) or c.disc_period_filters < 1:
            raise ConfigError(f"recipe: codec.disc_periods must be whole periods >= 1 and disc_period_filters >= 1, "
                              f"got {c.disc_periods!r} and {c.disc_period_filters!r}")
        samples = int(self.data.segment_seconds * self.model.sample_rate)
        if (c.adv_weight or c.feat_weight) and c.disc_n_ffts and samples < max(c.disc_n_ffts):
            raise ConfigError(f"recipe: data.segment_seconds gives {samples} samples, fewer than the discriminator's "
                              f"largest window {max(c.disc_n_ffts)}")


class SyntheticAudio(Dataset):
    """Harmonic tones with vibrato, decay and a little noise; item ``i`` depends only on (seed, i)."""

    def __init__(self, n: int, sample_rate: int, channels: int, seconds: float, seed: int = 0):
        self.n, self.sample_rate, self.channels = n, sample_rate, channels
        self.samples, self.seed = int(seconds * sample_rate), seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        r = torch.rand(6, generator=g)
        t = torch.arange(self.samples) / self.sample_rate
        f0 = 80 + 600 * r[0]
        phase = 2 * math.pi * torch.cumsum(f0 * (1 + 0.02 * torch.sin(2 * math.pi * (2 + 4 * r[1]) * t)), 0) / self.sample_rate
        wav = sum(torch.sin(k * phase) / k for k in range(1, 2 + int(6 * r[2])))
        wav = wav * torch.exp(-t * 3 * r[3]) + 0.02 * r[4] * torch.randn(self.samples, generator=g)
        wav = (0.2 + 0.5 * r[5]) * wav / wav.abs().max()
        return {"wav": wav.expand(self.channels, -1).clone(), "index": i}


def build_datasets(cfg: Recipe) -> tuple[Dataset, Dataset | None]:
    d, m = cfg.data, cfg.model
    if not d.train_manifest:
        valid = SyntheticAudio(d.valid_items, m.sample_rate, m.channels, d.segment_seconds, cfg.seed + 7919)
        train = SyntheticAudio(d.synthetic_items, m.sample_rate, m.channels, d.segment_seconds, cfg.seed)
        return train, (valid if d.valid_items else None)
    records = read_manifest(d.train_manifest)
    if d.valid_manifest:
        held = read_manifest(d.valid_manifest)
    else:
        records, held = split_held_out(records, d.valid_fraction)
    train = AudioSegmentDataset(records, m.sample_rate, m.channels, d.segment_seconds, random_crop=True, seed=cfg.seed)
    held = held[: d.valid_items]
    valid = AudioSegmentDataset(held, m.sample_rate, m.channels, d.segment_seconds, random_crop=False) if held else None
    return train, valid


def build_discriminator(c: CodecTaskConfig, channels: int) -> torch.nn.Module:
    """The recipe's adversary: the MS-STFT discriminator, the multi-period one, or both."""
    parts = []
    if c.disc_n_ffts:
        parts.append(MultiScaleSTFTDiscriminator(filters=c.disc_filters, in_channels=channels, n_ffts=c.disc_n_ffts))
    if c.disc_periods:
        parts.append(MultiPeriodDiscriminator(c.disc_periods, filters=c.disc_period_filters, in_channels=channels))
    return parts[0] if len(parts) == 1 else Discriminators(*parts)


def _init_weights(folder: str, codec: torch.nn.Module) -> None:
    """Load the weights of the codec folder ``folder`` (fp32) into ``codec``, refused unless its
    architecture is ``codec``'s, or ``codec``'s plus branches the folder lacks: config keys in the
    codec class's ``extension_keys`` (e.g. the frame codec's ``harmonics``), whose modules keep
    their fresh weights."""
    source = type(codec).from_pretrained(folder)
    mine = {k: v for k, v in codec.config.to_dict().items() if k != "name"}
    theirs = {k: v for k, v in source.config.to_dict().items() if k != "name"}
    diff = sorted(k for k in mine if mine[k] != theirs.get(k))
    if [k for k in diff if k not in getattr(codec, "extension_keys", ())]:
        raise ConfigError(f"recipe: codec.init_from {folder} has another architecture ({', '.join(diff)} differ)")
    weights = {k: v.float() for k, v in source.state_dict().items()}
    own = codec.state_dict()
    for key, value in weights.items():  # an input the extension grew (e.g. pitch features after the
        mine_ = own.get(key)             # encoder's inputs): the folder's weights, zeros for the new part
        if diff and mine_ is not None and mine_.shape != value.shape and mine_.dim() == value.dim() \
                and all(a >= b for a, b in zip(mine_.shape, value.shape)):
            grown = torch.zeros_like(mine_)
            grown[tuple(slice(0, n) for n in value.shape)] = value
            weights[key] = grown
    missing, unexpected = codec.load_state_dict(weights, strict=False)
    if "pitch_codebook" in diff:  # the frame codec's pitch codebook takes a code row from the residual VQ
        unexpected = [k for k in unexpected if not k.startswith("quantizer.layers.")]
    if unexpected or (missing and not diff):
        raise ConfigError(f"recipe: codec.init_from {folder}: weights do not match the architecture "
                          f"({len(missing)} missing, {len(unexpected)} unexpected)")


def _submodule(codec: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return codec.get_submodule(name)
    except AttributeError:
        names = ", ".join(n for n, _ in codec.named_children())
        raise ConfigError(f"recipe: codec.freeze: the codec has no submodule {name!r} (it has {names})") from None


@contextmanager
def read_only(module: torch.nn.Module):
    """Freeze ``module``'s parameters for a pass through it (AudioCraft's adversary read-only mode):
    gradients flow to its input, not into its parameters."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _JoinBackward(torch.autograd.Function):
    """Identity on ``y`` whose backward scales the gradient by ``scale`` and sends ``scale`` to the
    scalar ``extra``. The balancer's single ``y.backward(g)`` then also carries the commitment loss
    (DDP allows one backward per forward) and the 1/grad_accum and fp16 loss scale that
    ``accelerator.backward`` would have applied."""

    @staticmethod
    def forward(ctx, y, extra, scale):
        ctx.scale, ctx.extra_dtype = scale, extra.dtype
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, torch.full((), ctx.scale, dtype=ctx.extra_dtype, device=grad.device), None


class Task(BaseTask):
    """Generator + discriminator, their optimizers, losses and data (see trainer.py and task.py).

    ``codec_class`` is the generator's class (any codec with ``forward -> CodecOutput``,
    ``sample_n_q`` and ``apply_weight_norm``): a task for another codec subclasses this one and
    sets it with its own ``Recipe.model`` (see ``frame_codec_task``)."""

    codec_class = Codec

    def __init__(self, cfg: Recipe, accelerator):
        super().__init__(cfg, accelerator)  # self.rng: the same codebook counts and disc updates everywhere
        c = cfg.codec
        self.codec = self.codec_class(cfg.model)
        if c.init_from:  # before weight norm: its (g, v) are computed from the loaded weights
            _init_weights(c.init_from, self.codec)
        self.codec.apply_weight_norm().train()  # the quantizer keeps itself in fp32
        self.frozen = [_submodule(self.codec, name) for name in c.freeze]
        for module in self.frozen:  # no gradients; eval mode in every step (no codebook EMA updates)
            module.requires_grad_(False)
        self.models = {"generator": self.codec}
        self.weights = {"l1": c.l1_weight, "mel": c.mel_weight, "phase": c.phase_weight, "stft": c.stft_weight}
        if c.adv_weight or c.feat_weight:
            self.models["discriminator"] = build_discriminator(c, cfg.model.channels)
            self.weights.update(adv=c.adv_weight, feat=c.feat_weight)
        self.weights = {k: w for k, w in self.weights.items() if w > 0}
        self.ema_model = "generator"
        self.optimizers = {name: self.adamw(m if name == "generator" else m.parameters())
                           for name, m in self.models.items()}
        sr = cfg.model.sample_rate
        self.mel = (MultiScaleMelLoss.encodec(sr) if c.mel_loss == "encodec" else MultiScaleMelLoss.dac(sr))
        self.mel_metric = MultiScaleMelLoss.dac(sr)  # validation's mel distance, whatever the training loss
        self.spectral = {}  # the optional spectral losses in the balancer, under their weights' names
        if c.phase_weight > 0:
            self.spectral["phase"] = PhaseDerivativeLoss(c.phase_windows)
        if c.stft_weight > 0:
            self.spectral["stft"] = MultiResolutionSTFTLoss(c.stft_windows)
        self.balancer = Balancer(self.weights, ema_decay=c.balancer_ema)
        self.train_set, self.valid_set = build_datasets(cfg)
        self.collate = collate_audio
        self._logged_originals = False

    # -- setup / state ----------------------------------------------------------------------------
    def prepare(self, accelerator) -> list[torch.nn.Module]:
        wrapped = super().prepare(accelerator)
        self.mel.to(accelerator.device)
        self.mel_metric.to(accelerator.device)
        for loss in self.spectral.values():
            loss.to(accelerator.device)
        return wrapped

    def extra_state(self) -> dict:
        return {"balancer": self.balancer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.balancer.load_state_dict(state["balancer"])

    # -- one step ---------------------------------------------------------------------------------
    def _discriminator_step(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        logits, _ = self.wrapped["discriminator"](torch.cat([x, fake]))  # one forward, one backward (DDP)
        b = x.shape[0]
        loss = hinge_discriminator_loss([z[:b] for z in logits], [z[b:] for z in logits])
        self.backward(loss)
        self.optimizer_step("discriminator")
        return loss.detach()

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        c, acc = self.cfg.codec, self.acc
        x = batch["wav"].to(acc.device)
        n_q = self.codec.sample_n_q(self.rng) if c.quantizer_dropout else None
        for module in self.frozen:
            module.eval()
        teacher = c.teacher_f0 > 0 and float(torch.rand((), generator=self.rng)) < c.teacher_f0
        out = self.wrapped["generator"](x, n_q=n_q, **({"teacher_f0": True} if teacher else {}))
        logs = {"n_q": torch.tensor(float(out.n_q)), "commit": out.commitment_loss.detach()}
        adversarial = "discriminator" in self.models and step >= c.disc_start_step
        if adversarial and float(torch.rand((), generator=self.rng)) < c.disc_prob:
            logs["disc"] = self._discriminator_step(x, out.audio.detach())

        logs.update({k: v.detach() for k, v in out.aux_losses.items()})
        commit = c.commit_weight * out.commitment_loss + c.aux_weight * sum(out.aux_losses.values())
        scale = 1.0 / acc.gradient_accumulation_steps * (acc.scaler.get_scale() if acc.scaler is not None else 1.0)
        y = _JoinBackward.apply(out.audio, commit, scale) if c.balancer else out.audio
        # the adversary is read-only for the whole generator pass, its backward included: with
        # balancer=false the summed loss would otherwise leave gradients in its parameters
        with read_only(self.models["discriminator"]) if adversarial else nullcontext():
            with acc.autocast():
                losses = {"l1": F.l1_loss(y, x), "mel": self.mel(y, x)}
                losses.update({name: loss(y, x) for name, loss in self.spectral.items()})
                if adversarial:
                    disc = self.models["discriminator"]  # unwrapped: DDP allows one backward per forward
                    with torch.no_grad():
                        _, real_feats = disc(x)
                    fake_logits, fake_feats = disc(y)
                    losses["adv"] = hinge_generator_loss(fake_logits)
                    losses["feat"] = feature_matching_loss(real_feats, fake_feats)
            losses = {k: v for k, v in losses.items() if k in self.weights}
            if c.balancer:
                self.balancer.backward(losses, y)
            else:
                self.backward(sum(self.weights[k] * v for k, v in losses.items()) + commit)
        self.optimizer_step("generator")
        return {**logs, **{k: v.detach() for k, v in losses.items()}}

    # -- validation / export ----------------------------------------------------------------------
    validation_width = 3

    def validation_sums(self, model: Codec, batch: dict) -> torch.Tensor:
        """Mel distance (DAC's multi-scale log-mel L1) and L1 at the top bandwidth, summed over items."""
        x = batch["wav"].to(self.acc.device)
        y = model(x).audio.float()
        return torch.tensor([self.mel_metric(y, x).item() * len(x), F.l1_loss(y, x).item() * len(x), len(x)],
                            dtype=torch.float64)

    def validation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        n = max(float(sums[2]), 1.0)
        return {"mel": float(sums[0]) / n, "l1": float(sums[1]) / n}

    @torch.no_grad()
    def log_audio(self, model: Codec, logger, step: int) -> None:
        if self.valid_set is None or self.cfg.codec.log_audio <= 0:
            return
        n = min(self.cfg.codec.log_audio, len(self.valid_set))
        x = self.collate([self.valid_set[i] for i in range(n)])["wav"].to(self.acc.device)
        model.eval()
        y = model(x).audio
        model.train()
        for i in range(n):
            if not self._logged_originals:
                logger.audio(f"audio/{i}/original", x[i], step, self.cfg.model.sample_rate)
            logger.audio(f"audio/{i}/reconstruction", y[i], step, self.cfg.model.sample_rate)
        self._logged_originals = True

    def export(self, model: Codec, folder: Path) -> None:
        """The released model folder: ``config.json`` + ``model.safetensors``, weight norm folded."""
        model.save_pretrained(folder)
        dtype = self.cfg.codec.export_dtype
        if dtype is not None:
            model.save_pretrained(folder.with_name(f"{folder.name}_{dtype}"), dtype=_DTYPES[dtype])
