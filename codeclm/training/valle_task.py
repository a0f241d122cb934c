"""VALL-E training (``task: valle``): zero-shot TTS on a token cache of transcribed speech.

Data: a token cache (``codeclm data tokenize``) whose records carry ``text``, ``language`` and
``speaker``. At the start the transcripts are normalised and phonemised once (espeak-ng via
phonemizer; ``out_dir/phonemes.jsonl``) and a phoneme vocabulary is built
(``out_dir/phoneme_vocab.json``); a resumed run reuses both. Records longer than
``model.max_frames`` or without phonemes are skipped (counted in the log).

Per step, both stages (one optimizer, losses summed):

* AR: causal next-token CE over the utterance's first codebook followed by EOS, given the
  phonemes of the whole transcript.
* NAR: a random prefix of the utterance (``valle.min_prompt_fraction`` .. half of it, at most
  ``model.max_prompt_seconds``) is the acoustic prompt; one codebook level ``1 .. K-1`` per item,
  drawn at random, is predicted over the rest from the earlier levels.

The random draws come from a generator checkpointed with the run (exact resume). Export
(``out_dir/model``) is a complete :class:`~codeclm.pipelines.VoiceClone` folder::

    pipeline.json    {"type": "voice-clone", "format": 1, "languages": [...], "bandwidth": ...}
    valle/           config.json + model.safetensors
    phonemes/        phoneme_vocab.json
    codec/           a copy of ``valle.codec``
    voices/          voices.json + NAME.wav: the named voices of ``valle.voices``
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from codeclm.data.tokens import TokenCache
from codeclm.errors import ConfigError
from codeclm.fileio import atomic_output, replace_folder
from codeclm.lm.valle import Valle, ValleConfig
from codeclm.pipeline_info import write_pipeline_info
from codeclm.tokenizers.normalize import TextError, check_language
from codeclm.tokenizers.phonemes import VOCAB_NAME, PhonemeVocab, TextToPhonemes
from codeclm.training.config import TrainConfig
from codeclm.training.lm_task import LMDataConfig
from codeclm.training.task import Task as BaseTask
from codeclm.training.task import held_out

PHONEMES_FILE = "phonemes.jsonl"


@dataclass
class ValleTaskConfig:
    """The ``valle:`` section."""

    codec: str | None = None  # codec folder copied into the export (decodes the codes)
    languages: list[str] = field(default_factory=lambda: ["en", "de"])
    min_prompt_fraction: float = 0.2  # NAR prompt: a prefix of this fraction .. 0.5 of the utterance
    voices: dict[str, str] = field(default_factory=dict)  # name -> speaker id in the cache (named voices)
    voice_seconds: list[float] = field(default_factory=lambda: [2.5, 6.0])  # duration range of a voice's clip


@dataclass
class Recipe(TrainConfig):
    task: str = "valle"
    model: ValleConfig = field(default_factory=ValleConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    valle: ValleTaskConfig = field(default_factory=ValleTaskConfig)

    def validate_task(self) -> None:
        if not self.data.token_cache:
            raise ConfigError("recipe: data.token_cache is required for task valle (a folder made by tokenize_corpus)")
        if not 0 < self.valle.min_prompt_fraction <= 0.5:
            raise ConfigError(f"recipe: valle.min_prompt_fraction must be in (0, 0.5], got {self.valle.min_prompt_fraction}")
        for lang in self.valle.languages:
            check_language(lang)


# -- data ----------------------------------------------------------------------------------------------
def check_start_vocab(init_from: str | None, vocab: PhonemeVocab) -> None:
    """A run started from an export (recipe ``init_from``) must number the phonemes as that model
    does: its embedding rows are indexed by the export's ``phonemes/phoneme_vocab.json``."""
    if not init_from:
        return
    path = Path(init_from).expanduser() / "phonemes" / VOCAB_NAME
    if not path.is_file():
        raise ConfigError(f"recipe: init_from {init_from}: missing phonemes/{VOCAB_NAME}")
    start = PhonemeVocab.load(path)
    if start != vocab:
        extra = sorted(set(vocab.tokens) - set(start.tokens))
        raise ConfigError(f"recipe: init_from {init_from}: its phoneme vocabulary ({len(start)} tokens) differs "
                          f"from this data's ({len(vocab)}{', new: ' + ' '.join(extra[:5]) if extra else ''})")


def phonemize_cache(cache: TokenCache, languages: list[str], folder: Path) -> tuple[list[list[int] | None], PhonemeVocab]:
    """Phoneme ids per record (None: unusable) and the vocabulary; computed once into ``folder``."""
    path, vocab_path = folder / PHONEMES_FILE, folder / VOCAB_NAME
    if path.is_file() and vocab_path.is_file():
        vocab = PhonemeVocab.load(vocab_path)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [r["ids"] for r in rows], vocab
    front = TextToPhonemes(languages)
    strings: list[str | None] = [None] * len(cache)
    by_lang: dict[str, list[int]] = {}
    for i, e in enumerate(cache.entries):
        lang = e.get("language") or "en"
        try:
            code = check_language(lang)
        except TextError:
            continue
        if code in front.languages and (e.get("text") or "").strip():
            by_lang.setdefault(code, []).append(i)
    for code, idx in by_lang.items():
        for i, s in zip(idx, front.phonemes([cache.entries[i]["text"] for i in idx], code)):
            strings[i] = s if s.strip() else None
    vocab = PhonemeVocab.build([s for s in strings if s], front.languages)
    ids = [vocab.encode(s, check_language(cache.entries[i].get("language") or "en"), bos=True, eos=True)
           if s else None for i, s in enumerate(strings)]
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps({"path": e["path"], "ids": r}) + "\n" for e, r in zip(cache.entries, ids)),
                       encoding="utf-8")
    vocab.save(vocab_path)
    return ids, vocab


class Utterances(Dataset):
    """``{"codes": [K, T], "phonemes": [P], "index": i}`` for the usable records of a cache."""

    def __init__(self, cache: TokenCache, records: list[int], phonemes: list, n_q: int):
        self.cache, self.records, self.phonemes, self.n_q = cache, records, phonemes, n_q

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {"codes": self.cache[r]["codes"][: self.n_q], "phonemes": torch.tensor(self.phonemes[r]), "index": i}


def collate(items: list[dict]) -> dict:
    T = max(it["codes"].shape[1] for it in items)
    P = max(it["phonemes"].shape[0] for it in items)
    codes = torch.zeros(len(items), items[0]["codes"].shape[0], T, dtype=torch.long)
    ph = torch.zeros(len(items), P, dtype=torch.long)  # 0 = <pad>
    for b, it in enumerate(items):
        codes[b, :, : it["codes"].shape[1]] = it["codes"]
        ph[b, : it["phonemes"].shape[0]] = it["phonemes"]
    return {"codes": codes, "frames": torch.tensor([it["codes"].shape[1] for it in items]),
            "phonemes": ph, "phoneme_mask": ph != 0, "index": torch.tensor([it["index"] for it in items])}


# -- the task ------------------------------------------------------------------------------------------
class Task(BaseTask):
    """The VALL-E model (AR + NAR), one optimizer over both (see trainer.py and task.py)."""

    def __init__(self, cfg: Recipe, accelerator):
        super().__init__(cfg, accelerator)  # self.rng: prompt lengths and NAR levels, the same everywhere
        cache = TokenCache(cfg.data.token_cache)
        meta = cache.meta
        if cfg.model.n_q > meta["n_q"]:
            raise ConfigError(f"recipe: model.n_q={cfg.model.n_q} but {cfg.data.token_cache} holds {meta['n_q']} codebooks")
        if cfg.model.card != meta["bins"]:
            raise ConfigError(f"recipe: model.card={cfg.model.card} but the cache's codebooks have {meta['bins']} bins")
        out = Path(cfg.out_dir)
        if accelerator.is_main_process:
            phonemize_cache(cache, cfg.valle.languages, out)
        accelerator.wait_for_everyone()
        phonemes, self.vocab = phonemize_cache(cache, cfg.valle.languages, out)
        check_start_vocab(cfg.init_from, self.vocab)
        self.meta, self.cache = meta, cache
        self.config = dataclasses.replace(cfg.model, vocab_size=len(self.vocab), frame_rate=float(meta["frame_rate"]))
        usable = [i for i, e in enumerate(cache.entries)
                  if phonemes[i] is not None and 2 <= e["n_frames"] <= self.config.max_frames]
        held = [held_out(cache.entries[i]["path"], cfg.data.valid_fraction) for i in usable]
        train_idx = [i for i, h in zip(usable, held) if not h]
        valid_idx = [i for i, h in zip(usable, held) if h][: cfg.data.valid_items]
        if not train_idx:
            raise ConfigError(f"data: {cfg.data.token_cache} has no usable training utterance")
        self.skipped = len(cache) - len(usable)
        self.train_set = Utterances(cache, train_idx, phonemes, cfg.model.n_q)
        self.valid_set = Utterances(cache, valid_idx, phonemes, cfg.model.n_q) if valid_idx else None
        self.collate = collate
        self.model = Valle(self.config).train()
        self.models = {"valle": self.model}
        self.ema_model = "valle"
        self.optimizers = {"valle": self.adamw(self.model)}
        self.info(f"valle: {len(train_idx)} training / {len(valid_idx)} validation utterances, {self.skipped} "
                  f"skipped (too long or no phonemes); {len(self.vocab)} phoneme tokens; "
                  f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.1f} M parameters")

    def _nar_draws(self, frames: torch.Tensor, rng: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt length and codebook level per item (deterministic when ``rng`` is None)."""
        lo_frac, K = self.cfg.valle.min_prompt_fraction, self.config.n_q
        prompts, levels = [], []
        for b, n in enumerate(frames.tolist()):
            hi = max(1, min(n // 2, self.config.max_prompt_frames))
            lo = max(1, min(int(n * lo_frac), hi))
            if rng is None:
                prompts.append((lo + hi) // 2)
                levels.append(1 + b % (K - 1))
            else:
                prompts.append(int(torch.randint(lo, hi + 1, (1,), generator=rng)))
                levels.append(int(torch.randint(1, K, (1,), generator=rng)))
        return torch.tensor(prompts), torch.tensor(levels)

    def _losses(self, model, batch: dict, rng) -> dict[str, torch.Tensor]:
        """Both stages' losses through ``model``'s forward (the DDP-wrapped module in training)."""
        device = self.acc.device
        prompts, levels = self._nar_draws(batch["frames"], rng)
        return model(batch["phonemes"].to(device), batch["phoneme_mask"].to(device), batch["codes"].to(device),
                     batch["frames"], prompts, levels)

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        with self.acc.autocast():
            out = self._losses(self.wrapped["valle"], batch, self.rng)
        self.backward(out["loss"])
        self.optimizer_step("valle")
        return {k: v.detach() for k, v in out.items()}

    validation_width = 4

    def validation_sums(self, model: Valle, batch: dict) -> torch.Tensor:
        out = self._losses(model, batch, None)  # deterministic prompts and levels
        return torch.tensor([float(out["ar_ce"]), float(out["nar_ce"]), float(out["ar_acc"]), 1.0], dtype=torch.float64)

    def validation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        n = float(sums[3].clamp(min=1))  # batches: the mean of the batch means, as before
        return {"ar_ce": float(sums[0]) / n, "nar_ce": float(sums[1]) / n, "ar_acc": float(sums[2]) / n}

    # -- export ---------------------------------------------------------------------------------------
    def _voices(self) -> dict[str, dict]:
        """name -> the first cached utterance of the named speaker within ``voice_seconds``."""
        lo, hi = self.cfg.valle.voice_seconds
        found = {}
        for name, speaker in self.cfg.valle.voices.items():
            for e in self.cache.entries:
                if e.get("speaker") == speaker and lo <= e["duration"] <= hi and e.get("text"):
                    found[name] = {"path": e["path"], "text": e["text"],
                                   "language": check_language(e.get("language") or "en"), "speaker": speaker}
                    break
        return found

    def export(self, model: Valle, folder: Path) -> None:
        from codeclm.audio import load_audio, save_audio

        folder = Path(folder)
        model.save_pretrained(folder / "valle")
        self.vocab.save(folder / "phonemes" / VOCAB_NAME)
        if self.cfg.valle.codec:
            replace_folder(self.cfg.valle.codec, folder / "codec")
        voices = {}
        sr = int(self.meta["sample_rate"])
        (folder / "voices").mkdir(parents=True, exist_ok=True)
        for name, v in self._voices().items():
            wav, _ = load_audio(v["path"], sr, 1)
            save_audio(folder / "voices" / f"{name}.wav", wav, sr)
            voices[name] = {"file": f"{name}.wav", "text": v["text"], "language": v["language"], "speaker": v["speaker"]}
        with atomic_output(folder / "voices" / "voices.json") as tmp:
            tmp.write_text(json.dumps(voices, indent=2, ensure_ascii=False) + "\n")
        write_pipeline_info(folder, "voice-clone", languages=list(self.vocab.languages),
                            bandwidth=self.meta.get("bandwidth"), codec_identity=self.meta.get("codec"))
