"""Duration-guided VALL-E training (``task: valle_dur``) on aligned speech.

Data: a folder made by ``python -m codeclm.data.aligned_speech`` (codes of the shipped codec and
the phoneme token of every frame, from espeak-ng's own phoneme events). The phoneme vocabulary
(:class:`~codeclm.tokenizers.PhonemeVocab`, English) is built from its tokens at the start and
saved in ``out_dir``; a resumed run reuses it.

Per step (one optimizer over both stages, losses summed), for each target utterance a *prompt* is
a random window (``valle.prompt_seconds``) of another utterance of the same speaker, as at
inference where the prompt is a reference recording:

* AR: CE of the target's first codebook, frame by frame, each frame given its phoneme;
* NAR: CE of one random codebook level ``1 .. K-1`` of the target from the lower ones.

Partners, windows and levels come from the task's generator (checkpointed: exact resume);
validation uses fixed ones. Export (``out_dir/model``) is a complete
:class:`~codeclm.pipelines.VoiceClone` folder (``valle/`` holds the duration-guided model)::

    pipeline.json  valle/  phonemes/  codec/ (a copy of valle.codec)  voices/ (voices.json + NAME.wav)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from codeclm.data.aligned_speech import load_aligned
from codeclm.errors import ConfigError
from codeclm.fileio import atomic_output, replace_folder
from codeclm.lm.valle_dur import DurValle, DurValleConfig
from codeclm.pipeline_info import write_pipeline_info
from codeclm.tokenizers.phonemes import VOCAB_NAME, PhonemeVocab
from codeclm.training.config import DataConfig, TrainConfig
from codeclm.training.task import Task as BaseTask
from codeclm.training.task import held_out
from codeclm.training.valle_task import check_start_vocab

LANGUAGE = "en"


@dataclass
class AlignedDataConfig(DataConfig):
    """The ``data:`` section: ``aligned`` is the aligned-speech folder."""

    aligned: str | None = None


@dataclass
class ValleDurTaskConfig:
    codec: str | None = None  # codec folder copied into the export
    prompt_seconds: list[float] = field(default_factory=lambda: [1.5, 4.0])  # prompt window range
    voices: str | None = None  # a voices/ folder (voices.json + wavs) copied into the export


@dataclass
class Recipe(TrainConfig):
    task: str = "valle_dur"
    model: DurValleConfig = field(default_factory=DurValleConfig)
    data: AlignedDataConfig = field(default_factory=AlignedDataConfig)
    valle: ValleDurTaskConfig = field(default_factory=ValleDurTaskConfig)

    def validate_task(self) -> None:
        if not self.data.aligned:
            raise ConfigError("recipe: data.aligned is required for task valle_dur (python -m codeclm.data.aligned_speech)")
        lo, hi = self.valle.prompt_seconds
        if not 0 < lo <= hi <= self.model.max_prompt_seconds:
            raise ConfigError(f"recipe: valle.prompt_seconds must be 0 < lo <= hi <= model.max_prompt_seconds, "
                              f"got {self.valle.prompt_seconds}")


def build_vocab(records: list[dict], folder: Path) -> PhonemeVocab:
    path = folder / VOCAB_NAME
    if path.is_file():
        return PhonemeVocab.load(path)
    vocab = PhonemeVocab([t for r in records for t in r["tokens"]], (LANGUAGE,))
    folder.mkdir(parents=True, exist_ok=True)
    vocab.save(path)
    return vocab


def encode_tokens(vocab: PhonemeVocab, tokens: list[str], durations: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids ``<lang:en> tokens...`` and their frames (the language token has none)."""
    ids = vocab.encode(tokens, LANGUAGE)
    return torch.tensor(ids), torch.tensor([0] + list(durations))


class Utterances(Dataset):
    def __init__(self, items: list[int]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"index": self.items[i]}


def collate(items: list[dict]) -> dict:
    return {"index": torch.tensor([it["index"] for it in items])}


class Task(BaseTask):
    def __init__(self, cfg: Recipe, accelerator):
        super().__init__(cfg, accelerator)
        records, codes, info = load_aligned(cfg.data.aligned)
        if cfg.model.n_q > info["n_q"]:
            raise ConfigError(f"recipe: model.n_q={cfg.model.n_q} but {cfg.data.aligned} holds {info['n_q']} codebooks")
        out = Path(cfg.out_dir)
        if accelerator.is_main_process:
            build_vocab(records, out)
        accelerator.wait_for_everyone()
        self.vocab = build_vocab(records, out)
        check_start_vocab(cfg.init_from, self.vocab)
        self.info_data, self.records = info, records
        self.codes = [c[: cfg.model.n_q] for c in codes]
        self.tokens = [encode_tokens(self.vocab, r["tokens"], r["durations"]) for r in records]
        self.config = dataclasses.replace(cfg.model, vocab_size=len(self.vocab), frame_rate=float(info["frame_rate"]),
                                          card=int(info["card"]))
        lo_f = int(cfg.valle.prompt_seconds[0] * self.config.frame_rate)
        by_speaker: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_speaker.setdefault(r["speaker"], []).append(i)
        self.partners = {i: [j for j in by_speaker[r["speaker"]] if j != i and r_len(records[j]) >= lo_f]
                         for i, r in enumerate(records)}
        limit = self.config.max_frames - self.config.max_prompt_frames
        usable = [i for i, r in enumerate(records) if self.partners[i] and 2 <= r["n_frames"] <= limit]
        held = [held_out(records[i]["id"], cfg.data.valid_fraction) for i in usable]
        train_idx = [i for i, h in zip(usable, held) if not h]
        valid_idx = [i for i, h in zip(usable, held) if h][: cfg.data.valid_items]
        if not train_idx:
            raise ConfigError(f"data: {cfg.data.aligned} has no usable training utterance")
        self.train_set = Utterances(train_idx)
        self.valid_set = Utterances(valid_idx) if valid_idx else None
        self.collate = collate
        self.model = DurValle(self.config).train()
        self.models = {"valle": self.model}
        self.ema_model = "valle"
        self.optimizers = {"valle": self.adamw(self.model)}
        self.info(f"valle_dur: {len(train_idx)} training / {len(valid_idx)} validation utterances of "
                  f"{len(by_speaker)} speakers; {len(self.vocab)} phoneme tokens; "
                  f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.1f} M parameters")

    def _batch(self, index: torch.Tensor, rng: torch.Generator | None) -> dict:
        """Target tokens/durations/codes and a prompt window of a partner utterance per item."""
        c = self.config
        lo_s, hi_s = self.cfg.valle.prompt_seconds
        lo, hi = int(lo_s * c.frame_rate), int(hi_s * c.frame_rate)
        toks, durs, prompts, targets, levels = [], [], [], [], []
        for b, i in enumerate(index.tolist()):
            partners = self.partners[i]
            if rng is None:
                j, want, level = partners[0], (lo + hi) // 2, 1 + b % (c.n_q - 1)
            else:
                j = partners[int(torch.randint(len(partners), (1,), generator=rng))]
                want = int(torch.randint(lo, hi + 1, (1,), generator=rng))
                level = int(torch.randint(1, c.n_q, (1,), generator=rng))
            pc = self.codes[j]
            n = min(want, pc.shape[1])
            start = 0 if rng is None else int(torch.randint(pc.shape[1] - n + 1, (1,), generator=rng))
            prompts.append(pc[:, start: start + n])
            targets.append(self.codes[i])
            t, d = self.tokens[i]
            toks.append(t)
            durs.append(d)
            levels.append(level)
        L = max(t.shape[0] for t in toks)
        tok = torch.zeros(len(toks), L, dtype=torch.long)
        for b, t in enumerate(toks):
            tok[b, : t.shape[0]] = t
        return {"tokens": tok, "mask": tok != 0, "durations": durs, "prompts": prompts, "targets": targets,
                "levels": torch.tensor(levels)}

    def _losses(self, model, batch: dict, rng) -> dict[str, torch.Tensor]:
        b = self._batch(batch["index"], rng)
        device = self.acc.device
        return model(b["tokens"].to(device), b["mask"].to(device), b["durations"], b["prompts"], b["targets"],
                     b["levels"])

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        with self.acc.autocast():
            out = self._losses(self.wrapped["valle"], batch, self.rng)
        self.backward(out["loss"])
        self.optimizer_step("valle")
        return {k: v.detach() for k, v in out.items()}

    validation_width = 5

    def validation_sums(self, model: DurValle, batch: dict) -> torch.Tensor:
        out = self._losses(model, batch, None)
        return torch.tensor([float(out["ar_ce"]), float(out["nar_ce"]), float(out["ar_acc"]), float(out["nar_acc"]),
                             1.0], dtype=torch.float64)

    def validation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        n = float(sums[4].clamp(min=1))
        return {"ar_ce": float(sums[0]) / n, "nar_ce": float(sums[1]) / n, "ar_acc": float(sums[2]) / n,
                "nar_acc": float(sums[3]) / n}

    def export(self, model: DurValle, folder: Path) -> None:
        folder = Path(folder)
        model.save_pretrained(folder / "valle")
        self.vocab.save(folder / "phonemes" / VOCAB_NAME)
        if self.cfg.valle.codec:
            replace_folder(self.cfg.valle.codec, folder / "codec")
        if self.cfg.valle.voices:
            export_voices(self.cfg.valle.voices, folder / "voices", self.vocab.languages)
        write_pipeline_info(folder, "voice-clone", languages=list(self.vocab.languages),
                            bandwidth=self.info_data.get("bandwidth"), codec_identity=self.info_data.get("codec"))


def r_len(record: dict) -> int:
    return int(record["n_frames"])


def export_voices(source: str | Path, dest: Path, languages) -> None:
    """Copy the named voices of ``source/voices.json`` whose language the model speaks (wav + entry)."""
    source = Path(source)
    listed = json.loads((source / "voices.json").read_text(encoding="utf-8"))
    keep = {k: v for k, v in listed.items() if v.get("language", "en") in languages}
    dest.mkdir(parents=True, exist_ok=True)
    for v in keep.values():
        shutil.copyfile(source / v["file"], dest / v["file"])
    with atomic_output(dest / "voices.json") as tmp:
        tmp.write_text(json.dumps(keep, indent=2, ensure_ascii=False) + "\n")
