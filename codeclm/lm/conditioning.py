"""Conditioning of the token LM: named conditioners behind one provider, fused into the LM input.

    provider = ConditioningProvider({"text": text_cond, "melody": melody_cond},
                                    {"text": ConditionSpec("builtin"), "melody": ConditionSpec("melody", fuse="sum")})
    prepared = provider.prepare({"text": ["calm piano"], "melody": [wav]}, batch=1, context=ctx)  # CPU work
    conds = provider(prepared)                              # {name: Condition(emb [B, T, D], mask [B, T])}
    fused = provider.fuse(conds, pattern, n_frames)         # FusedCondition -> TokenLM(seq, fused)

Every condition is a :class:`Conditioner` (an ``nn.Module``) registered under a type name
(:func:`register_conditioner`, or a ``"module:Class"`` path) plus a :class:`ConditionSpec`, its
config entry, which says how its states enter the LM (``fuse``):

* ``cross``: appended, in spec order, to the cross-attention memory (MusicGen's text; the
  shipped melody models too). Width: the LM's ``cond_dim`` (projected by its ``cond_proj``).
* ``sum``: one state per codec frame, added to the LM's input embeddings at the step that
  predicts that frame under the codebook pattern (the newest frame of the step, so the delay
  pattern's codebook 0). Width: the LM's ``dim``.
* ``prepend``: tokens put before the sequence (the LM drops their outputs). Width: ``dim``.
  Masked (padding) prepend positions are zeros, not excluded from attention.

:class:`ConditionFuser` turns ``{name: Condition}`` into a :class:`FusedCondition` (what the
transformer reads); :class:`ConditionDropout` is classifier-free guidance's dropout and null
condition, used by training (rows dropped) and by generation (the null batch). The null of a
condition is all zeros with an all-False mask (MusicGen's), whatever the conditioner.

A new condition is one file with a :class:`Conditioner` subclass (``prepare``, ``forward``,
``config``) and one config entry: ``lm.conditions.<name>: {type: "pkg.module:Class", fuse: ...}``
in a recipe, written to ``pipeline.json``'s ``conditions`` on export.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from codeclm.errors import CodecLMError, ConfigError

__all__ = ["CONDITIONERS", "FUSE_MODES", "Condition", "ConditionContext", "ConditionDropout", "ConditionFuser",
           "ConditionSpec", "Conditioner", "ConditioningProvider", "FusedCondition", "conditioner_class",
           "register_conditioner", "step_frames", "texts_per_row"]

FUSE_MODES = ("cross", "sum", "prepend")

# type name -> class, or "module:Class" imported on first use (no import cycle between the
# conditioner modules and this one)
CONDITIONERS: dict[str, type | str] = {
    "builtin": "codeclm.lm.text_encoder:BuiltinTextConditioner",
    "t5": "codeclm.lm.conditioners:T5Conditioner",
    "melody": "codeclm.lm.melody:MelodyConditioner",
    "caption_attributes": "codeclm.lm.attributes:CaptionAttributeConditioner",
    "caption_key": "codeclm.lm.attributes:CaptionKeyConditioner",
    "caption_instruments": "codeclm.lm.attributes:CaptionInstrumentConditioner",
}


def register_conditioner(kind: str):
    """Class decorator: conditioner type ``kind`` (a spec's ``type``) is this class."""

    def wrap(cls):
        cls.kind = kind
        CONDITIONERS[kind] = cls
        return cls

    return wrap


def conditioner_class(kind: str) -> type:
    """The class of a spec's ``type``: a registered name or a ``"module:Class"`` path."""
    target = CONDITIONERS.get(kind, kind if isinstance(kind, str) and ":" in kind else None)
    if target is None:
        raise ConfigError(f"unknown conditioner type {kind!r}; known: {sorted(CONDITIONERS)} "
                          "(or give a 'module:Class' path)")
    if isinstance(target, str):
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"conditioner type {kind!r}: cannot import {target} ({exc})") from None
        if kind in CONDITIONERS:
            CONDITIONERS[kind] = cls
        target = cls
    return target


def texts_per_row(value, batch: int, what: str = "captions") -> list:
    """A text condition's value as one entry per row: a string (or None) is every row's; a list
    must hold ``batch`` entries."""
    texts = [value] * batch if value is None or isinstance(value, str) else list(value)
    if len(texts) != batch:
        raise CodecLMError(f"got {len(texts)} {what} for a batch of {batch}")
    return texts


class Condition(NamedTuple):
    """One condition's states ``emb [B, T, D]`` and ``mask [B, T]`` (bool, True = valid)."""

    emb: torch.Tensor
    mask: torch.Tensor


@dataclass
class ConditionContext:
    """What ``prepare`` may need besides the values: the frames to generate / train on and the
    codec's framing (a frame-aligned condition is one state per codec frame)."""

    n_frames: int | None = None
    sample_rate: int | None = None
    hop_length: int | None = None


class Conditioner(nn.Module):
    """Base class of a condition: ``prepare`` (CPU) then ``forward`` -> ``(emb [B, T, D], mask [B, T])``.

    ``prepare(value, batch, context)`` turns the user's value for this condition (None: absent for
    every row; else typically a list with one entry per row, None entries absent) into the input of
    ``forward``; ``output_dim`` is the width of ``emb``. ``config()`` returns the constructor's
    keyword arguments: the default ``save_folder`` / ``load`` write them with the weights.
    """

    kind = ""
    output_dim: int

    def prepare(self, value: Any, batch: int, context: ConditionContext) -> Any:
        raise NotImplementedError

    def forward(self, prepared: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__}: define config() (or save_folder / load)")

    def save_folder(self, folder: str | os.PathLike) -> Path:
        from codeclm.pretrained import fused_state_dict, save_folder

        config = {"model_type": f"codeclm-condition-{self.kind}", **self.config()}
        return save_folder(folder, config, fused_state_dict(self))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Conditioner:
        from codeclm.pretrained import load_weights_into, read_json, read_weights

        folder = Path(folder)
        config = read_json(folder / "config.json", f"{cls.kind} conditioner")
        config.pop("model_type", None)
        model = cls(**config)
        load_weights_into(model, read_weights(folder), str(folder))
        return model.eval()


@dataclass
class ConditionSpec:
    """One condition's config entry (a recipe's ``lm.conditions.<name>``, ``pipeline.json``'s
    ``conditions.<name>``).

    ``type``: the conditioner (:data:`CONDITIONERS` name or ``"module:Class"``); ``fuse``: one of
    :data:`FUSE_MODES`; ``dropout``: in training, the fraction of rows that lose this condition
    on their own, on top of classifier-free guidance's (None: none, and no random draw);
    ``source``: the attribute / batch field holding its value (default: the name); ``folder``:
    its sub-folder in a pipeline folder (default: the name); ``options``: keyword arguments for a
    freshly built conditioner (training).
    """

    type: str
    fuse: str = "cross"
    dropout: float | None = None
    source: str | None = None
    folder: str | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise ConfigError(f"condition: type must be a conditioner name, got {self.type!r}")
        if self.fuse not in FUSE_MODES:
            raise ConfigError(f"condition {self.type!r}: fuse must be one of {FUSE_MODES}, got {self.fuse!r}")
        if self.dropout is not None and not 0 <= float(self.dropout) <= 1:
            raise ConfigError(f"condition {self.type!r}: dropout must be in [0, 1], got {self.dropout}")
        self.options = dict(self.options or {})

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "condition") -> ConditionSpec:
        if isinstance(data, ConditionSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be an object with a type, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
        if "type" not in data:
            raise ConfigError(f"{where}: needs a type")
        return cls(**dict(data))

    def to_dict(self) -> dict:
        out = {"type": self.type, "fuse": self.fuse}
        for key in ("dropout", "source", "folder"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.options:
            out["options"] = dict(self.options)
        return out


# -- fusion ----------------------------------------------------------------------------------------
def _pad_time(x: torch.Tensor, length: int, value=0) -> torch.Tensor:
    extra = length - x.shape[1]
    if extra <= 0:
        return x
    return nn.functional.pad(x, [0, 0] * (x.dim() - 2) + [0, extra], value=value)


def _cat_rows(a: torch.Tensor | None, b: torch.Tensor | None, value=0) -> torch.Tensor | None:
    """Concatenate on the batch axis, padding dim 1 to the longer one."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise CodecLMError("cannot batch a fused condition with one that lacks a part")
    T = max(a.shape[1], b.shape[1])
    return torch.cat([_pad_time(a, T, value), _pad_time(b.to(a.dtype), T, value)], 0)


@dataclass
class FusedCondition:
    """What the transformer reads: the cross-attention memory ``cross [B, Tc, cond_dim]`` with
    ``cross_mask [B, Tc]``, ``prepend [B, P, dim]`` tokens and ``sum [B, S, dim]``, added to the
    input embeddings of steps ``0..S-1`` (step 0: the start step; later steps zero)."""

    cross: torch.Tensor | None = None
    cross_mask: torch.Tensor | None = None
    prepend: torch.Tensor | None = None
    sum: torch.Tensor | None = None

    @property
    def prepend_len(self) -> int:
        return 0 if self.prepend is None else int(self.prepend.shape[1])

    def cat(self, other: FusedCondition) -> FusedCondition:
        """Rows of ``self`` then rows of ``other`` (classifier-free guidance's 2B batch)."""
        if self.cross is not None and self.cross_mask is None:
            self = dataclasses.replace(self, cross_mask=torch.ones(self.cross.shape[:2], dtype=torch.bool,
                                                                   device=self.cross.device))
        if other.cross is not None and other.cross_mask is None:
            other = dataclasses.replace(other, cross_mask=torch.ones(other.cross.shape[:2], dtype=torch.bool,
                                                                     device=other.cross.device))
        if self.prepend_len != other.prepend_len:
            raise CodecLMError(f"prepended conditions differ in length ({self.prepend_len} vs {other.prepend_len})")
        mask = None if self.cross_mask is None else _cat_rows(self.cross_mask.bool(), other.cross_mask.bool(), False)
        return FusedCondition(cross=_cat_rows(self.cross, other.cross), cross_mask=mask,
                              prepend=_cat_rows(self.prepend, other.prepend), sum=_cat_rows(self.sum, other.sum))

    def pad_cross(self, length: int) -> FusedCondition:
        """The cross memory padded (zeros, mask False) to ``length`` positions (static decoding)."""
        if self.cross is None:
            return self
        mask = self.cross_mask
        if mask is None:
            mask = torch.ones(self.cross.shape[:2], dtype=torch.bool, device=self.cross.device)
        return dataclasses.replace(self, cross=_pad_time(self.cross, length),
                                   cross_mask=_pad_time(mask.to(device=self.cross.device, dtype=torch.bool),
                                                        length, False))


def step_frames(pattern, n_frames: int, device=None) -> torch.Tensor:
    """``[S]``: the frame whose tokens LM input step ``s`` predicts under ``pattern`` (the newest
    frame of sequence step ``s``; -1 where the step holds no token). Input step 0 is the start step
    and predicts sequence step 0, so a ``sum`` condition's frame ``t`` is added where frame ``t``
    first appears (the delay pattern's codebook 0)."""
    frame_index, _ = pattern.indices(n_frames, device or "cpu")
    return frame_index.max(dim=0).values


class ConditionFuser:
    """``{name: Condition}`` -> :class:`FusedCondition`, each condition by its fuse mode.

    ``cross`` and ``prepend`` conditions are concatenated along time in the order of ``fuse``;
    ``sum`` conditions (one state per frame) are aligned to the pattern's steps
    (:func:`step_frames`) and added up; a masked frame, or one past the condition's end, adds zeros.
    """

    def __init__(self, fuse: Mapping[str, str]) -> None:
        for name, mode in fuse.items():
            if mode not in FUSE_MODES:
                raise ConfigError(f"condition {name!r}: fuse must be one of {FUSE_MODES}, got {mode!r}")
        self.fuse = dict(fuse)

    def names(self, mode: str) -> list[str]:
        return [n for n, m in self.fuse.items() if m == mode]

    @staticmethod
    def _concat(conds: list[Condition]) -> Condition | None:
        if not conds:
            return None
        emb, mask = conds[0]
        for e, m in conds[1:]:
            emb = torch.cat([emb, e.to(device=emb.device, dtype=emb.dtype)], 1)
            mask = torch.cat([mask, m.to(mask.device)], 1)
        return Condition(emb, mask)

    def __call__(self, conds: Mapping[str, Condition], pattern=None, n_frames: int | None = None) -> FusedCondition:
        missing = [n for n in self.fuse if n not in conds]
        if missing:
            raise CodecLMError(f"missing conditions {missing}")
        cross = self._concat([conds[n] for n in self.names("cross")])
        prepend = self._concat([conds[n] for n in self.names("prepend")])
        summed = None
        sums = self.names("sum")
        if sums:
            if pattern is None or n_frames is None:
                raise CodecLMError(f"conditions {sums} are summed per frame: pass the pattern and n_frames")
            summed = sum(self._align(conds[n], pattern, n_frames) for n in sums)
        if prepend is not None:
            prepend = prepend.emb * prepend.mask[..., None].to(prepend.emb.dtype)
        return FusedCondition(cross=None if cross is None else cross.emb,
                              cross_mask=None if cross is None else cross.mask.bool(), prepend=prepend, sum=summed)

    @staticmethod
    def _align(cond: Condition, pattern, n_frames: int) -> torch.Tensor:
        """``emb [B, T, D]`` per frame -> ``[B, S, D]`` per LM input step (zeros where none)."""
        emb, mask = cond
        frames = step_frames(pattern, n_frames, emb.device)  # [S]
        ok = (frames >= 0) & (frames < emb.shape[1])
        idx = frames.clamp(0, max(emb.shape[1] - 1, 0))
        out = emb[:, idx] * (mask[:, idx] & ok[None]).to(emb.dtype)[..., None]
        return out


# -- classifier-free guidance ----------------------------------------------------------------------
class ConditionDropout:
    """Classifier-free guidance's condition dropout and null condition (training and generation).

    In training (:meth:`draw` + :meth:`apply`) a fraction ``p`` of the rows lose every condition
    (one ``torch.rand(B)`` draw), then each condition with its own ``dropout`` (``per_condition``)
    loses it for that fraction of the rows (one more draw per such condition, in order). A lost
    condition is its null: zeros with an all-False mask, exactly what generation's unconditional
    batch uses (:meth:`nullify`), so the model learns the null it is guided against.
    """

    def __init__(self, p: float = 0.0, per_condition: Mapping[str, float | None] | None = None) -> None:
        if not 0 <= p <= 1:
            raise ConfigError(f"condition dropout must be in [0, 1], got {p}")
        self.p = float(p)
        self.per_condition = {k: v for k, v in (per_condition or {}).items() if v is not None}

    @staticmethod
    def null(cond: Condition) -> Condition:
        """The unconditional input of one condition: zeroed states and an all-False mask."""
        return Condition(torch.zeros_like(cond.emb), torch.zeros_like(cond.mask, dtype=torch.bool))

    def nullify(self, conds: Mapping[str, Condition]) -> dict[str, Condition]:
        return {name: self.null(c) for name, c in conds.items()}

    def draw(self, names, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Rows to drop per condition (``[B]`` bool); ``"*"`` holds the rows that lost them all."""
        everything = torch.rand(batch, generator=generator) < self.p
        out = {"*": everything}
        for name in names:
            q = self.per_condition.get(name)
            out[name] = everything | (torch.rand(batch, generator=generator) < q) if q is not None else everything
        return out

    @staticmethod
    def apply(conds: Mapping[str, Condition], drops: Mapping[str, torch.Tensor]) -> dict[str, Condition]:
        """``conds`` with the rows of ``drops[name]`` replaced by the null (differentiably)."""
        out = {}
        for name, (emb, mask) in conds.items():
            drop = drops.get(name)
            if drop is None or not bool(drop.any()):
                out[name] = Condition(emb, mask)
                continue
            drop = drop.to(emb.device)
            emb = torch.where(drop[:, None, None], torch.zeros((), dtype=emb.dtype, device=emb.device), emb)
            out[name] = Condition(emb, mask.bool() & ~drop[:, None].to(mask.device))
        return out


# -- the provider ----------------------------------------------------------------------------------
def _to_device(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


class ConditioningProvider(nn.Module):
    """The LM's named conditions: ``prepare`` (CPU) -> ``forward`` -> ``fuse`` (-> TokenLM).

    ``conditioners`` (name -> :class:`Conditioner`-like module with ``prepare`` and ``forward``)
    and ``specs`` (name -> :class:`ConditionSpec`) have the same names; their order is the fuse
    order. ``dropout``: classifier-free guidance's :class:`ConditionDropout` (built from the specs'
    ``dropout`` with ``p = 0`` when not given).
    """

    def __init__(self, conditioners: Mapping[str, nn.Module], specs: Mapping[str, ConditionSpec | Mapping],
                 cfg_dropout: float = 0.0) -> None:
        super().__init__()
        specs = {n: ConditionSpec.from_dict(s, f"condition {n!r}") for n, s in specs.items()}
        if list(specs) != list(conditioners):
            raise ConfigError(f"conditions {list(specs)} and conditioners {list(conditioners)} differ")
        self.conditioners = nn.ModuleDict(dict(conditioners))
        self.specs = specs
        self.fuser = ConditionFuser({n: s.fuse for n, s in specs.items()})
        self.dropout = ConditionDropout(cfg_dropout, {n: s.dropout for n, s in specs.items()})

    # -- construction / files --------------------------------------------------------------------
    @classmethod
    def build(cls, specs: Mapping[str, ConditionSpec | Mapping], cfg_dropout: float = 0.0, **ready) -> ConditioningProvider:
        """Fresh conditioners from the specs' ``options`` (those in ``ready`` are used as given)."""
        specs = {n: ConditionSpec.from_dict(s, f"condition {n!r}") for n, s in specs.items()}
        conds = {n: ready[n] if n in ready else conditioner_class(s.type)(**s.options) for n, s in specs.items()}
        return cls(conds, specs, cfg_dropout)

    def save_folders(self, folder: str | os.PathLike) -> dict:
        """Each conditioner into ``folder/<spec.folder or name>``; returns ``pipeline.json``'s ``conditions``."""
        folder = Path(folder)
        for name, cond in self.conditioners.items():
            cond.save_folder(folder / (self.specs[name].folder or name))
        return self.spec_dicts()

    def spec_dicts(self) -> dict:
        return {n: {k: v for k, v in s.to_dict().items() if k not in ("dropout", "options")}
                for n, s in self.specs.items()}

    @classmethod
    def load(cls, folder: str | os.PathLike, specs: Mapping[str, ConditionSpec | Mapping]) -> ConditioningProvider:
        folder = Path(folder)
        specs = {n: ConditionSpec.from_dict(s, f"{folder}: condition {n!r}") for n, s in specs.items()}
        conds = {}
        for name, spec in specs.items():
            sub = folder / (spec.folder or name)
            if not sub.is_dir():
                raise ConfigError(f"{folder}: missing {sub.name}/ (condition {name!r})")
            conds[name] = conditioner_class(spec.type).load(sub)
        return cls(conds, specs)

    # -- the three stages ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.conditioners)

    def __contains__(self, name: str) -> bool:
        return name in self.conditioners

    def get(self, name: str):
        return self.conditioners[name] if name in self.conditioners else None

    def prepare(self, values: Mapping[str, Any], batch: int, context: ConditionContext | None = None,
                strict: bool = True) -> dict[str, Any]:
        """Each conditioner's ``prepare`` of its value: ``values[name]``, else
        ``values[spec.source]`` (missing: None). ``strict``: a non-None value under a key that is
        no condition's name or source is an error."""
        context = context or ConditionContext()
        if strict:
            keys = set(self.specs) | {s.source for s in self.specs.values() if s.source}
            extra = [k for k, v in values.items() if v is not None and k not in keys]
            if extra:
                raise CodecLMError(f"this model has no {extra[0]} conditioning (it has: {', '.join(self.names) or 'none'})")
        return {n: self.conditioners[n].prepare(values[n] if n in values else values.get(s.source), batch, context)
                for n, s in self.specs.items()}

    def forward(self, prepared: Mapping[str, Any], modules: Mapping[str, nn.Module] | None = None) -> dict[str, Condition]:
        """``{name: Condition}``; ``modules`` overrides the conditioners by name (training: the
        wrapped / distributed copies)."""
        out = {}
        for name, cond in self.conditioners.items():
            module = modules[name] if modules is not None and name in modules else cond
            emb, mask = module(_to_device(prepared[name], cond.device))
            out[name] = Condition(emb, mask.bool())
        return out

    @torch.no_grad()
    def encode(self, values: Mapping[str, Any], batch: int, context: ConditionContext | None = None) -> dict[str, Condition]:
        """``prepare`` + ``forward`` under no_grad (inference)."""
        return self(self.prepare(values, batch, context))

    def fuse(self, conds: Mapping[str, Condition], pattern=None, n_frames: int | None = None) -> FusedCondition:
        return self.fuser(conds, pattern, n_frames)

    def widths(self) -> dict[str, int]:
        return {n: int(c.output_dim) for n, c in self.conditioners.items()}

    def check_lm(self, lm_config) -> None:
        """One-line ConfigError unless every condition fits the LM (widths, cross-attention)."""
        cross = self.fuser.names("cross")
        if lm_config.cross_attention and not cross:
            raise ConfigError("this LM is conditioned (cross-attention): pass a text conditioner")
        if cross and not lm_config.cross_attention:
            raise ConfigError(f"conditions {cross} use cross-attention, which this LM has not (cross_attention=False)")
        for name, width in self.widths().items():
            mode = self.specs[name].fuse
            want = lm_config.condition_dim if mode == "cross" else lm_config.dim
            if width != want:
                what = "conditioner" if name == "text" else f"condition {name!r} ({mode})"
                raise ConfigError(f"{what} gives width {width}, the LM expects {want}")
