"""Token LM training (MusicGen recipe): the task the trainer runs for ``task: lm``.

Data: a token cache (``data.token_cache``, see :mod:`codeclm.data.tokens`) of captioned codes.
Each item is a random crop of ``data.segment_frames`` frames (seeded by (seed, epoch, index), so
a resumed run reads the same crops) of the first ``model.n_q`` codebooks; shorter records are
padded and their padding is excluded from the loss.

Per step: the codes are interleaved by the model's pattern (special token = ``card``), a start
step of special tokens is put in front (teacher forcing: logits at step s predict step s + 1),
the conditions (a :class:`~codeclm.lm.conditioning.ConditioningProvider`: the built-in text
conditioner, trained jointly with the LM, and any other) encode the batch, classifier-free
guidance's :class:`~codeclm.lm.conditioning.ConditionDropout` replaces every condition of a
fraction ``lm.cond_dropout`` of the rows by its null (zeros, all masked: the null generation
guides against), and the fuser feeds them to the LM; the loss is the cross-entropy over the
pattern's valid positions, averaged over codebooks (each codebook's loss is logged too).

Conditions (``lm.conditions``, name -> :class:`~codeclm.lm.conditioning.ConditionSpec` fields):
``text`` is always there (``type: builtin``, built from the ``text:`` section; its ``fuse`` is
``cross``); ``lm.melody: true`` adds ``melody`` (``type: melody``, ``dropout: lm.melody_dropout``);
an entry may change their ``fuse`` / ``dropout`` / ``options`` or add a condition, e.g.
``style: {type: "mypkg.style:StyleConditioner", fuse: prepend, options: {dim: 256}}``. A
condition's training values are the batch field its class names (``data_field``: the text the
caption, the melody the cache's per-frame ``chroma``), else the manifest entry's key
``source`` (default: the condition's name).

``text.tokenizer: null`` trains a SentencePiece caption tokenizer on the training captions at
the start (``out_dir/text_tokenizer``, reused on resume). Export (``out_dir/model``)::

    lm/             config.json (LMConfig, model_type codeclm-lm) + model.safetensors
    text/           the conditioner's save(): tokenizer.model/.json, config.json, model.safetensors
    melody/         with ``lm.melody``: the chroma conditioner (codeclm.lm.melody)
    codec/          a copy of the codec folder ``lm.codec`` (when set)
    pipeline.json   {"type": "text-to-music", "format", "pattern", "delays", "codec", "n_q", "bandwidth", ...}

so ``TextToMusic.from_pretrained(out_dir/model)`` loads it directly.

Melody (``lm.melody: true``, MusicGen-melody style): the token cache must hold per-frame chroma
(``codeclm data tokenize --chroma``); the crop's dominant-pitch-class indices are embedded by a
:class:`~codeclm.lm.melody.MelodyConditioner` and appended to the caption's states along the
cross-attention axis (``lm.conditions.melody.fuse: sum`` adds them per frame to the LM input
instead). The melody is dropped (all masked) for a fraction ``lm.melody_dropout`` of the items,
and whenever the caption is dropped for CFG, so one model serves text-only and text+melody
prompts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from codeclm.data.tokens import TokenCache
from codeclm.errors import ConfigError
from codeclm.lm.logits import check_codebook_temperatures
from codeclm.fileio import replace_folder
from codeclm.lm.conditioning import ConditionContext, ConditioningProvider, ConditionSpec, conditioner_class
from codeclm.lm.config import LMConfig
from codeclm.lm.text_encoder import BuiltinTextConditioner
from codeclm.lm.transformer import TokenLM
from codeclm.pipeline_info import write_pipeline_info
from codeclm.pretrained import fused_state_dict, read_config, save_folder
from codeclm.tokenizers.text import CaptionTokenizer, train_caption_tokenizer
from codeclm.training.config import DataConfig, TrainConfig
from codeclm.training.task import Task as BaseTask
from codeclm.training.task import held_out

TOKENIZER_DIR = "text_tokenizer"


@dataclass
class LMDataConfig(DataConfig):
    """The ``data:`` section for ``task: lm`` (the audio keys of DataConfig are unused)."""

    token_cache: str | None = None  # folder made by tokenize_corpus (required)
    valid_token_cache: str | None = None  # null: hold out valid_fraction of token_cache by path hash
    segment_frames: int = 500  # frames per training crop


@dataclass
class TextConfig:
    """The ``text:`` section: the built-in caption conditioner."""

    tokenizer: str | None = None  # a CaptionTokenizer folder or .model file; null: train one on the captions
    vocab_size: int = 1024  # when training the tokenizer (clamped for small corpora)
    model_type: str = "unigram"  # unigram | bpe
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_len: int = 64  # caption tokens kept


@dataclass
class LMTaskConfig:
    """The ``lm:`` section."""

    cond_dropout: float = 0.1  # fraction of captions replaced by "" (classifier-free guidance)
    codec: str | None = None  # the codec folder written to pipeline.json (decoding generated codes)
    melody: bool = False  # chroma (melody) conditioning; needs a cache tokenized with --chroma
    melody_dropout: float = 0.5  # fraction of items trained without their melody
    conditions: dict = field(default_factory=dict)  # name -> ConditionSpec fields (see the module docstring)
    # with init_from: codebook k of this model starts from codebook init_codebooks[k] of the
    # exported LM (its embedding and head; null: newly initialised), e.g. [0, null, 1, 2, 3, 4]
    # when a codec inserts a new row 1 before the old rows 1-4. None: the same positions
    init_codebooks: list | None = None
    # with init_from: conditions the export has not (e.g. one this recipe adds), started as
    # initialised; every other part is loaded strictly
    init_fresh: list = field(default_factory=list)
    # written to the export's pipeline.json: the long-form window (seconds per LM call; a model
    # trained on 5 s crops stays musical in ~10 s windows and drifts in its whole 20 s context) and
    # one sampling temperature per codebook (e.g. a cooler pitch row). None: not written
    window_seconds: float | None = None
    codebook_temperatures: list | None = None


@dataclass
class Recipe(TrainConfig):
    task: str = "lm"
    model: LMConfig = field(default_factory=lambda: LMConfig(cross_attention=True))
    data: LMDataConfig = field(default_factory=LMDataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    lm: LMTaskConfig = field(default_factory=LMTaskConfig)

    def validate_task(self) -> None:
        d, t = self.data, self.text
        if not d.token_cache:
            raise ConfigError("recipe: data.token_cache is required for task lm (a folder made by tokenize_corpus)")
        if d.segment_frames < 1:
            raise ConfigError(f"recipe: data.segment_frames must be >= 1, got {d.segment_frames}")
        if self.lm.window_seconds is not None and not self.lm.window_seconds > 0:
            raise ConfigError(f"recipe: lm.window_seconds must be a positive number of seconds, got {self.lm.window_seconds}")
        if self.lm.codebook_temperatures is not None:
            check_codebook_temperatures(self.lm.codebook_temperatures, self.model.n_q, "recipe: lm.codebook_temperatures",
                                        ConfigError)
        if self.lm.init_codebooks is not None and not self.init_from:
            raise ConfigError("recipe: lm.init_codebooks maps the codebooks of init_from, which is not set")
        if self.lm.init_fresh and not self.init_from:
            raise ConfigError("recipe: lm.init_fresh names conditions init_from has not, but init_from is not set")
        others = [n for n in condition_specs(self) if n != "text"]
        unknown = [n for n in self.lm.init_fresh if n not in others]
        if unknown:
            raise ConfigError(f"recipe: lm.init_fresh: {unknown[0]!r} is not one of this recipe's conditions "
                              f"other than text ({', '.join(others)})")
        if not 0 <= self.lm.melody_dropout <= 1:
            raise ConfigError(f"recipe: lm.melody_dropout must be in [0, 1], got {self.lm.melody_dropout}")
        if not 0 <= self.lm.cond_dropout <= 1:
            raise ConfigError(f"recipe: lm.cond_dropout must be in [0, 1], got {self.lm.cond_dropout}")
        if not self.model.cross_attention:
            raise ConfigError("recipe: model.cross_attention must be true (the LM is conditioned on captions)")
        if t.model_type not in ("unigram", "bpe") or t.vocab_size < 3 or t.max_len < 1:
            raise ConfigError("recipe: text.model_type must be unigram or bpe, vocab_size >= 3, max_len >= 1")
        if t.dim % 2 or t.dim % t.num_heads or t.num_layers < 0:
            raise ConfigError(f"recipe: text.dim ({t.dim}) must be even and divisible by text.num_heads ({t.num_heads})")
        if self.model.cond_dim is not None and self.model.cond_dim != t.dim:
            raise ConfigError(f"recipe: model.cond_dim ({self.model.cond_dim}) must be null or text.dim ({t.dim})")
        specs = condition_specs(self)
        if specs["text"].fuse != "cross" or specs["text"].type != "builtin":
            raise ConfigError("recipe: lm.conditions.text must stay type builtin, fuse cross (the text: section)")


def condition_specs(cfg: Recipe) -> dict[str, ConditionSpec]:
    """The recipe's conditions, in fuse order: text, melody (``lm.melody``), then ``lm.conditions``'s."""
    raw: dict[str, dict] = {"text": {"type": "builtin"}}
    if cfg.lm.melody:
        raw["melody"] = {"type": "melody", "dropout": cfg.lm.melody_dropout}
    extra = cfg.lm.conditions or {}
    if not isinstance(extra, dict) and not hasattr(extra, "items"):
        raise ConfigError(f"recipe: lm.conditions must be a mapping of name -> condition, got {extra!r}")
    for name, entry in extra.items():
        if not isinstance(entry, dict) and not hasattr(entry, "items"):
            raise ConfigError(f"recipe: lm.conditions.{name} must be a mapping, got {entry!r}")
        raw[str(name)] = {**raw.get(str(name), {}), **dict(entry)}
    specs = {n: ConditionSpec.from_dict(r, f"recipe: lm.conditions.{n}") for n, r in raw.items()}
    if "melody" in specs and not specs["melody"].options:  # as wide as where it is fused
        specs["melody"].options = {"dim": cfg.text.dim if specs["melody"].fuse == "cross" else cfg.model.dim}
    return specs


def data_field(name: str, spec: ConditionSpec) -> str:
    """The batch field holding a condition's training values."""
    return getattr(conditioner_class(spec.type), "data_field", None) or spec.source or name


# -- data ----------------------------------------------------------------------------------------------
def caption_of(entry: dict) -> str:
    return entry.get("caption") or entry.get("text") or ""


class TokenSegments(Dataset):
    """Crops of ``frames`` frames of the first ``n_q`` codebooks of some records of a token cache:
    ``{"codes": [n_q, <= frames], "caption": str, "index": i}``, plus the crop of each per-frame
    field the cache holds (``chroma``) and the entry's value of each of ``fields`` (metadata of
    other conditions; None when missing). Random crops are seeded by (seed, epoch, i); otherwise
    a record's first frames."""

    def __init__(self, cache: TokenCache, records: list[int], frames: int, n_q: int,
                 random_crop: bool, seed: int = 0, fields: tuple[str, ...] = ()):
        self.cache, self.records, self.frames, self.n_q = cache, records, frames, n_q
        self.random_crop, self.seed, self.epoch = random_crop, seed, 0
        self.fields = tuple(f for f in fields if f not in ("caption", "chroma", "codes", "index"))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def captions(self) -> list[str]:
        return [caption_of(self.cache.entries[r]) for r in self.records]

    def __getitem__(self, i: int) -> dict:
        item = self.cache[self.records[i]]
        codes = item["codes"][: self.n_q]
        start, total = 0, codes.shape[1]
        if self.random_crop and total > self.frames:
            start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, total - self.frames + 1))
        out = {"codes": codes[:, start:start + self.frames], "caption": caption_of(item), "index": i}
        if "chroma" in item:
            out["chroma"] = item["chroma"][start:start + self.frames]
        entry = self.cache.entries[self.records[i]]
        for f in self.fields:
            out[f] = entry.get(f)
        return out


class Collate:
    """Pads codes to the batch's longest crop (``frames`` counts the real ones) and prepares each
    condition (the provider's stage 1: captions tokenized, chroma padded with -1...) into
    ``batch["conditions"]``."""

    def __init__(self, provider: ConditioningProvider, fields: dict[str, str]):
        self.provider, self.fields = provider, fields  # condition name -> batch field

    def __call__(self, items: list[dict]) -> dict:
        T = max(it["codes"].shape[1] for it in items)
        codes = torch.zeros(len(items), items[0]["codes"].shape[0], T, dtype=torch.long)
        frames = torch.tensor([it["codes"].shape[1] for it in items])
        for b, it in enumerate(items):
            codes[b, :, : it["codes"].shape[1]] = it["codes"]
        values = {name: [it.get(field) for it in items] for name, field in self.fields.items()}
        prepared = self.provider.prepare(values, len(items), ConditionContext(n_frames=T))
        return {"codes": codes, "frames": frames, "captions": [it["caption"] for it in items], "conditions": prepared}


def build_datasets(cfg: Recipe, n_q: int, fields: tuple[str, ...] = ()) -> tuple[TokenSegments, TokenSegments | None, TokenCache]:
    d = cfg.data
    cache = TokenCache(d.token_cache)
    if d.valid_token_cache:
        train_idx, vcache = list(range(len(cache))), TokenCache(d.valid_token_cache)
        valid_idx = list(range(len(vcache)))
    else:
        held = [held_out(e["path"], d.valid_fraction) for e in cache.entries]
        train_idx = [i for i, h in enumerate(held) if not h]
        valid_idx, vcache = [i for i, h in enumerate(held) if h], cache
    if not train_idx:
        raise ConfigError(f"data: {d.token_cache} leaves no training record (valid_fraction={d.valid_fraction})")
    train = TokenSegments(cache, train_idx, d.segment_frames, n_q, random_crop=True, seed=cfg.seed, fields=fields)
    valid_idx = valid_idx[: d.valid_items]
    valid = TokenSegments(vcache, valid_idx, d.segment_frames, n_q, random_crop=False, fields=fields) if valid_idx else None
    return train, valid, cache


# -- the task ------------------------------------------------------------------------------------------
def lm_loss(lm, codes: torch.Tensor, frames: torch.Tensor, cond, cond_mask: torch.Tensor | None,
            pattern, special: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean CE over codebooks, per-codebook CE sums [K], valid counts [K])`` of ``codes [B, K, T]``
    whose first ``frames[b]`` frames are real. ``cond``: the cross memory (with ``cond_mask``) or a
    :class:`~codeclm.lm.conditioning.FusedCondition`."""
    B, K, T = codes.shape
    seq, valid = pattern.build(codes, special)
    real = (torch.arange(T, device=codes.device)[None, :] < frames.to(codes.device)[:, None]).long()
    real_seq, _ = pattern.build(real[:, None, :].expand(B, K, T), 0)
    loss_mask = valid[None] & (real_seq > 0)  # [B, K, S]
    start = torch.full((B, K, 1), special, dtype=seq.dtype, device=seq.device)
    logits = lm(torch.cat([start, seq[:, :, :-1]], dim=2), cond, cond_mask)  # [B, K, S, card]
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                         seq.clamp(max=logits.shape[-1] - 1).reshape(-1), reduction="none").view(B, K, -1)
    ce = ce * loss_mask
    sums, counts = ce.sum(dim=(0, 2)), loss_mask.sum(dim=(0, 2))
    loss = (sums / counts.clamp(min=1)).mean()
    return loss, sums.detach(), counts


class Task(BaseTask):
    """TokenLM + its conditions (built-in text, melody, ...), one optimizer over all (see trainer.py and task.py)."""

    def __init__(self, cfg: Recipe, accelerator):
        super().__init__(cfg, accelerator)  # self.rng: condition dropout, the same on every process
        t = cfg.text
        meta = TokenCache(cfg.data.token_cache).meta
        if cfg.model.n_q > meta["n_q"]:
            raise ConfigError(f"recipe: model.n_q={cfg.model.n_q} but {cfg.data.token_cache} holds {meta['n_q']} codebooks")
        if cfg.model.card != meta["bins"]:
            raise ConfigError(f"recipe: model.card={cfg.model.card} but the cache's codebooks have {meta['bins']} bins")
        specs = condition_specs(cfg)
        self.fields = {n: data_field(n, s) for n, s in specs.items()}
        for name, field_name in self.fields.items():
            if field_name == "chroma" and not meta.get("chroma"):
                what = "lm.melody" if name == "melody" else f"lm.conditions.{name}"
                raise ConfigError(f"recipe: {what} needs a token cache with chroma; {cfg.data.token_cache} has none "
                                  "(make it with: codeclm data tokenize --chroma ...)")
        self.meta = meta
        self.lm_config = dataclasses.replace(cfg.model, cond_dim=t.dim)
        self.pattern = self.lm_config.get_pattern()
        self.train_set, self.valid_set, _ = build_datasets(cfg, cfg.model.n_q, tuple(self.fields.values()))
        tokenizer = self._tokenizer()
        self.lm = TokenLM(self.lm_config).train()
        self.text = BuiltinTextConditioner(tokenizer, dim=t.dim, num_layers=t.num_layers, num_heads=t.num_heads,
                                           max_len=t.max_len).train()
        self.provider = ConditioningProvider.build(specs, cfg.lm.cond_dropout, text=self.text).train()
        self.provider.check_lm(self.lm_config)
        self.models = {"lm": self.lm, **self.provider.conditioners}
        self.ema_model = "lm"
        # one module over all (names "lm.", "text.", "melody.", ...; the same parameter order)
        self.optimizers = {"lm": self.adamw(nn.ModuleDict(self.models))}
        self.collate = Collate(self.provider, self.fields)

    def export_parts(self) -> dict[str, str]:
        return {"lm": "lm", **{n: self.provider.specs[n].folder or n for n in self.provider.conditioners}}

    def init_parts(self) -> dict[str, str]:
        return {n: sub for n, sub in self.export_parts().items() if n not in self.cfg.lm.init_fresh}

    def remap_export_weights(self, name: str, weights: dict, folder: Path) -> dict:
        """``lm.init_codebooks``: each codebook's embedding and head from the exported codebook it
        names (null: kept as initialised); every other weight must match as it is."""
        rows = self.cfg.lm.init_codebooks
        if name != "lm" or rows is None:
            return weights
        n_src = int(read_config(folder).get("n_q", 0))
        if len(rows) != self.lm_config.n_q or not all(r is None or (type(r) is int and 0 <= r < n_src) for r in rows):
            raise ConfigError(f"recipe: lm.init_codebooks must give each of the {self.lm_config.n_q} codebooks a "
                              f"codebook of {folder} (0..{n_src - 1}) or null, got {rows}")
        per_row = re.compile(r"(emb|heads)\.(\d+)\.(.+)")
        own = self.lm.state_dict()
        shared = {k: v for k, v in weights.items() if not per_row.fullmatch(k)}
        if set(shared) != {k for k in own if not per_row.fullmatch(k)}:
            return weights  # load_weights_into names the missing / unexpected keys
        out = dict(shared)
        for key, fresh in own.items():
            m = per_row.fullmatch(key)
            if m is not None:
                src = rows[int(m[2])]
                out[key] = fresh if src is None else weights[f"{m[1]}.{src}.{m[3]}"]
        return out

    def _tokenizer(self) -> CaptionTokenizer:
        t, acc = self.cfg.text, self.acc
        # a run started from an export reads captions with the export's tokenizer (its text
        # embedding rows are indexed by it), unless the recipe names one
        tokenizer = t.tokenizer
        if not tokenizer and self.cfg.init_from:
            tokenizer = Path(self.cfg.init_from).expanduser() / (condition_specs(self.cfg)["text"].folder or "text")
        if tokenizer:
            path = Path(tokenizer)
            tok = CaptionTokenizer.load(path) if path.is_dir() else CaptionTokenizer(path)
            tok.max_len = t.max_len
            return tok
        folder = Path(self.cfg.out_dir) / TOKENIZER_DIR
        # a fresh run trains it on the main process (a resumed one reuses it). Every process waits
        # whatever it sees: one that looked after the main process had written the file used to
        # skip the barrier and deadlock the run
        if acc.is_main_process and not (folder / "tokenizer.json").is_file():
            model = train_caption_tokenizer(self.train_set.captions(), folder / "spm", vocab_size=t.vocab_size,
                                            model_type=t.model_type, seed=self.cfg.seed)
            CaptionTokenizer(model, max_len=t.max_len).save(folder)
            model.unlink()
        acc.wait_for_everyone()
        return CaptionTokenizer.load(folder)

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        acc = self.acc
        codes = batch["codes"].to(acc.device)
        drops = self.provider.dropout.draw(self.provider.names, codes.shape[0], self.rng)  # CFG (+ per condition)
        with acc.autocast():
            fused = self._condition(self.wrapped, batch["conditions"], codes.shape[2], drops)
            loss, sums, counts = lm_loss(self.wrapped["lm"], codes, batch["frames"], fused, None,
                                         self.pattern, self.lm_config.special_token)
        self.backward(loss)
        self.optimizer_step("lm")
        logs = {"ce": loss.detach(), "cond_dropped": drops["*"].float().mean()}
        per = sums / counts.clamp(min=1)
        logs.update({f"ce_q{k}": per[k] for k in range(per.shape[0])})
        return logs

    def _condition(self, models: dict, prepared: dict, n_frames: int, drops: dict | None = None):
        """The fused conditions of a batch (``models``: the conditioners to run, by name), with
        the rows of ``drops`` nulled (classifier-free guidance's dropout)."""
        conds = self.provider(prepared, modules=models)
        if drops is not None:
            conds = self.provider.dropout.apply(conds, drops)
        return self.provider.fuse(conds, self.pattern, n_frames)

    # -- validation / export ----------------------------------------------------------------------
    def eval_modules(self, model: TokenLM) -> list[torch.nn.Module]:
        return [model, *(m for k, m in self.models.items() if k != "lm")]

    @property
    def validation_width(self) -> int:
        return 2 * self.lm_config.n_q  # per-codebook CE sums and token counts

    def validation_sums(self, model: TokenLM, batch: dict) -> torch.Tensor:
        codes = batch["codes"].to(self.acc.device)
        fused = self._condition(self.models, batch["conditions"], codes.shape[2])
        _, s, c = lm_loss(model, codes, batch["frames"], fused, None, self.pattern, self.lm_config.special_token)
        return torch.cat([s.double(), c.double()])

    def validation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """Cross-entropy (nats per token) and perplexity over the validation crops, with captions."""
        K = self.lm_config.n_q
        per = sums[:K] / sums[K:].clamp(min=1)
        ce = float(per.mean())
        return {"ce": ce, "ppl": math.exp(min(ce, 50.0)), **{f"ce_q{k}": float(per[k]) for k in range(K)}}

    def export(self, model: TokenLM, folder: Path) -> None:
        """``folder/lm`` + ``folder/text`` + ``folder/pipeline.json`` (see the module docstring)."""
        folder = Path(folder)
        save_folder(folder / "lm", model.config.to_dict(), fused_state_dict(model))
        conditions = self.provider.save_folders(folder)
        if self.cfg.lm.codec:
            replace_folder(self.cfg.lm.codec, folder / "codec")
        m, lm = self.meta, self.cfg.lm
        defaults = {}  # the recipe's generation defaults for the pipeline
        if lm.window_seconds:
            defaults["window_seconds"] = float(lm.window_seconds)
        if lm.codebook_temperatures is not None:
            defaults["codebook_temperatures"] = [float(t) for t in lm.codebook_temperatures]
        write_pipeline_info(folder, "text-to-music", pattern=self.lm_config.pattern, delays=self.lm_config.delays,
                            codec=self.cfg.lm.codec, n_q=self.lm_config.n_q,
                            bandwidth=m.get("bandwidth"), frame_rate=m.get("frame_rate"),
                            sample_rate=m.get("sample_rate"), channels=m.get("channels"),
                            codec_identity=m.get("codec"), conditions=conditions, **defaults)
