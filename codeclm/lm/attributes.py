"""Caption attributes: a music caption's tempo, key, mode, style, mood and instruments as a few
prepended LM tokens (the ``caption_attributes`` condition type).

    cond = CaptionAttributeConditioner(dim=256)
    parse_caption("calm jazz track in D minor at 92 bpm with piano and upright bass")
    # CaptionAttributes(bpm=92.0, tonic=2, mode='minor', style='jazz', mood='calm',
    #                   instruments=('piano', 'upright bass'))
    emb, mask = cond(cond.prepare(["calm piano", "techno at 128 bpm"], 2, None))  # [2, 6, 256], [2, 6]

A small LM learns a condition it reads at one position far faster than one it must find by
cross-attending to a caption's characters (AudioCraft offers prepend / sum beside cross for this
reason): the text encoder keeps the free caption, and this conditioner hands the LM the handful of
attributes a music caption is mostly about, one token each, in a fixed order (``SLOTS``):

* ``tempo``: ``N bpm`` (or ``beats per minute``), a bucket embedding (``tempo_step`` bpm wide,
  ``tempo_range``) plus a learned direction scaled by the log tempo, so neighbouring tempi are near;
* ``key``: the tonic of ``X major`` / ``X minor`` (``C``, ``F#``, ``Bb``...), 12 rows;
* ``mode``: ``major`` / ``minor``;
* ``style``, ``mood``: one word of ``styles`` / ``moods``;
* ``instruments``: the mean of the embeddings of every name of ``instruments`` in the caption
  (longest names first, so "electric piano" is not also "piano").

An attribute the caption does not name is masked (a zero token, as the classifier-free-guidance
null is). The vocabularies are the constructor's arguments and are saved with the weights, so a
model keeps the words it was trained on; the defaults are the synthetic corpus's
(:mod:`codeclm.data.synth_music`) plus a few common synonyms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.conditioning import Conditioner, register_conditioner, texts_per_row

__all__ = ["SLOTS", "CaptionAttributeConditioner", "CaptionAttributes", "CaptionInstrumentConditioner",
           "CaptionKeyConditioner", "key_features", "parse_caption"]

SLOTS = ("tempo", "key", "mode", "style", "mood", "instruments")
STYLES = ("pop", "rock", "electronic", "jazz", "orchestral", "ambient", "folk")
MOODS = ("upbeat", "cheerful", "bright", "calm", "gentle", "warm", "driving", "tense", "energetic",
         "melancholic", "dark", "moody")
INSTRUMENTS = ("piano", "electric piano", "nylon guitar", "acoustic guitar", "jazz guitar", "overdriven guitar",
               "distorted guitar", "upright bass", "electric bass", "picked bass", "synth bass", "violin", "cello",
               "strings", "trumpet", "brass", "alto sax", "tenor sax", "oboe", "clarinet", "flute", "square lead",
               "saw lead", "new age pad", "warm pad", "choir pad", "banjo", "vibraphone", "drums",
               "guitar", "bass", "sax", "saxophone", "synth", "pad", "organ", "choir", "harp", "percussion")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor, as the corpus
_NOTE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_RE = re.compile(r"\b([A-Ga-g])[\s-]?(#|♯|b|♭|sharp|flat)?[\s-]+(major|minor)\b")
_MODE_RE = re.compile(r"\b(major|minor)\b", re.I)
_BPM_RE = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b", re.I)


@dataclass(frozen=True)
class CaptionAttributes:
    """What :func:`parse_caption` read (None / empty: not named)."""

    bpm: float | None = None
    tonic: int | None = None      # 0 = C
    mode: str | None = None       # "major" | "minor"
    style: str | None = None
    mood: str | None = None
    instruments: tuple[str, ...] = ()


def _words(text: str, vocab, multi: bool) -> list[str]:
    """Vocabulary entries found as whole words, longest first, each span used once."""
    low, found = f" {' '.join(re.findall(r'[a-z0-9#]+', text.lower()))} ", []
    for entry in sorted(vocab, key=lambda w: (-len(w), w)):
        pattern = f" {entry} "
        while pattern in low:
            found.append(entry)
            low = low.replace(pattern, " | ", 1)
            if not multi:
                return found
    return found


def parse_caption(text: str, styles=STYLES, moods=MOODS, instruments=INSTRUMENTS) -> CaptionAttributes:
    """The attributes a caption names; anything it does not name is None."""
    if not isinstance(text, str):
        raise CodecLMError(f"a caption must be a string, got {type(text).__name__}")
    bpm = None
    m = _BPM_RE.search(text)
    if m:
        bpm = float(m.group(1))
    tonic = mode = None
    k = _KEY_RE.search(text)
    if k:
        letter, accidental, mode = k.group(1).upper(), k.group(2), k.group(3).lower()
        shift = {"#": 1, "♯": 1, "sharp": 1, "b": -1, "♭": -1, "flat": -1}.get(accidental or "", 0)
        tonic = (_NOTE[letter] + shift) % 12
    else:
        mm = _MODE_RE.search(text)
        mode = mm.group(1).lower() if mm else None
    # the instruments first, so that a word inside one ("warm" in "warm pad") is not read as a mood
    inst = _words(text, instruments, multi=True)
    low = rest = text.lower()
    for name in inst:
        rest = re.sub(rf"\b{re.escape(name)}\b", " ", rest, count=1)
    style = next(iter(_words(rest, styles, multi=False)), None)
    mood = next(iter(_words(rest, moods, multi=False)), None)
    ordered = tuple(sorted(set(inst), key=lambda n: (low.find(n), inst.index(n))))  # caption order
    return CaptionAttributes(bpm, tonic, mode, style, mood, ordered)


@register_conditioner("caption_attributes")
class CaptionAttributeConditioner(Conditioner):
    """``forward(prepared) -> (emb [B, len(SLOTS), dim], mask [B, len(SLOTS)])`` (fuse ``prepend``)."""

    data_field = "caption"  # training: a token cache entry's caption

    def __init__(self, dim: int = 256, tempo_range: tuple[float, float] = (40.0, 220.0), tempo_step: float = 5.0,
                 styles=STYLES, moods=MOODS, instruments=INSTRUMENTS) -> None:
        super().__init__()
        lo, hi = (float(v) for v in tempo_range)
        if dim < 1 or not 0 < lo < hi or not tempo_step > 0:
            raise ConfigError(f"caption attributes: need dim >= 1, 0 < tempo_range[0] < tempo_range[1] and "
                              f"tempo_step > 0, got dim={dim}, tempo_range={tempo_range}, tempo_step={tempo_step}")
        self.dim, self.tempo_range, self.tempo_step = int(dim), (lo, hi), float(tempo_step)
        self.styles, self.moods, self.instruments = list(styles), list(moods), list(instruments)
        for what, vocab in (("styles", self.styles), ("moods", self.moods), ("instruments", self.instruments)):
            if not vocab or len(set(vocab)) != len(vocab) or not all(isinstance(w, str) and w for w in vocab):
                raise ConfigError(f"caption attributes: {what} must be distinct non-empty words")
        self.output_dim = self.dim
        self.n_tempo = int(math.ceil((hi - lo) / self.tempo_step)) + 1
        self.tempo = nn.Embedding(self.n_tempo, dim)
        self.tempo_dir = nn.Parameter(torch.zeros(dim))  # a learned direction x log2(bpm / 110)
        self.key = nn.Embedding(12, dim)
        self.mode = nn.Embedding(2, dim)
        self.style = nn.Embedding(len(self.styles), dim)
        self.mood = nn.Embedding(len(self.moods), dim)
        self.instrument = nn.Embedding(len(self.instruments), dim)
        self.slot = nn.Parameter(torch.zeros(len(SLOTS), dim))  # which attribute a token is
        for p in (self.tempo.weight, self.key.weight, self.mode.weight, self.style.weight, self.mood.weight,
                  self.instrument.weight, self.slot, self.tempo_dir):
            nn.init.normal_(p, std=0.02)

    def config(self) -> dict:
        return {"dim": self.dim, "tempo_range": list(self.tempo_range), "tempo_step": self.tempo_step,
                "styles": self.styles, "moods": self.moods, "instruments": self.instruments}

    def parse(self, text: str) -> CaptionAttributes:
        return parse_caption(text, self.styles, self.moods, self.instruments)

    def prepare(self, value, batch: int, context=None) -> dict[str, torch.Tensor]:
        """One caption per row (a string: the same for all; None entries: nothing named) ->
        index tensors (-1: not named) and the instruments' multi-hot ``[B, n_instruments]``."""
        texts = texts_per_row(value, batch)
        lo, hi = self.tempo_range
        out = {k: torch.full((batch,), -1, dtype=torch.long) for k in ("tempo", "key", "mode", "style", "mood")}
        out["log_tempo"] = torch.zeros(batch)
        out["instruments"] = torch.zeros(batch, len(self.instruments))
        for i, text in enumerate(texts):
            a = self.parse(text or "")
            if a.bpm is not None and a.bpm > 0:
                bpm = min(max(a.bpm, lo), hi)
                out["tempo"][i] = round((bpm - lo) / self.tempo_step)
                out["log_tempo"][i] = math.log2(bpm / 110.0)
            if a.tonic is not None:
                out["key"][i] = a.tonic
            if a.mode is not None:
                out["mode"][i] = ("major", "minor").index(a.mode)
            if a.style is not None:
                out["style"][i] = self.styles.index(a.style)
            if a.mood is not None:
                out["mood"][i] = self.moods.index(a.mood)
            for name in a.instruments:
                out["instruments"][i, self.instruments.index(name)] = 1.0
        return out

    def forward(self, prepared: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        def lookup(table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
            return table(idx.clamp(min=0))

        tempo = prepared["tempo"]
        tokens = [lookup(self.tempo, tempo) + prepared["log_tempo"][:, None].to(self.slot.dtype) * self.tempo_dir,
                  lookup(self.key, prepared["key"]), lookup(self.mode, prepared["mode"]),
                  lookup(self.style, prepared["style"]), lookup(self.mood, prepared["mood"])]
        multi = prepared["instruments"].to(self.slot.dtype)
        count = multi.sum(1, keepdim=True)
        tokens.append(multi @ self.instrument.weight / count.clamp(min=1))
        emb = torch.stack(tokens, 1) + self.slot[None]
        mask = torch.stack([tempo >= 0, prepared["key"] >= 0, prepared["mode"] >= 0, prepared["style"] >= 0,
                            prepared["mood"] >= 0, count[:, 0] > 0], 1)
        return emb * mask[..., None].to(emb.dtype), mask


def key_features(attrs: CaptionAttributes) -> torch.Tensor | None:
    """``[38]`` pitch-class features of a caption's key, or None when it names neither key nor mode:
    the scale's pitch classes (12, rotated to the tonic), its tonic triad (12), the tonic (12) and
    the mode (2). Only the mode's 2 are set for a bare "minor"."""
    if attrs.mode is None:
        return None
    out = torch.zeros(38)
    mode = ("major", "minor").index(attrs.mode)
    out[36 + mode] = 1.0
    if attrs.tonic is not None:
        scale = SCALES[attrs.mode]
        out[[(attrs.tonic + s) % 12 for s in scale]] = 1.0
        out[[12 + (attrs.tonic + scale[d]) % 12 for d in (0, 2, 4)]] = 1.0
        out[24 + attrs.tonic] = 1.0
    return out


class _PerFrameCaption(Conditioner):
    """A caption's features as one state per frame (fuse ``sum``): ``forward(prepared) ->
    (emb [B, n_frames, dim], mask [B, n_frames])``, the same state at every frame, masked where
    the caption names nothing. ``features(attrs)`` (None: nothing named) goes through one linear
    map that starts at zero, so a model fine-tuned with the condition starts as the model without it."""

    data_field = "caption"
    n_features: int

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"{type(self).__name__}: dim must be >= 1, got {dim}")
        self.dim = self.output_dim = int(dim)
        self.proj = nn.Linear(self.n_features, self.dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def features(self, attrs: CaptionAttributes) -> torch.Tensor | None:
        raise NotImplementedError

    def parse(self, text: str) -> CaptionAttributes:
        return parse_caption(text)

    def config(self) -> dict:
        return {"dim": self.dim}

    def prepare(self, value, batch: int, context=None) -> dict[str, torch.Tensor]:
        """One caption per row (a string: the same for all; None: nothing named) -> the features
        ``[B, n_features]``, whether the caption names any ``[B]``, and the frames to cover."""
        texts = texts_per_row(value, batch)
        feats, named = torch.zeros(batch, self.n_features), torch.zeros(batch, dtype=torch.bool)
        for i, text in enumerate(texts):
            f = self.features(self.parse(text or ""))
            if f is not None:
                feats[i], named[i] = f, True
        n_frames = getattr(context, "n_frames", None) or 1
        return {"features": feats, "named": named, "n_frames": torch.tensor(int(n_frames))}

    def forward(self, prepared: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = prepared["features"].to(self.proj.weight.dtype)
        named = prepared["named"].bool()
        T = int(prepared["n_frames"])
        emb = self.proj(feats) * named[:, None].to(feats.dtype)
        return emb[:, None, :].expand(-1, T, -1), named[:, None].expand(-1, T)


@register_conditioner("caption_key")
class CaptionKeyConditioner(_PerFrameCaption):
    """The caption's key and mode at every frame (:func:`key_features`: scale, tonic triad, tonic,
    mode; fuse ``sum``).

    A prepended key token reaches a frame only through attention, and teacher forcing teaches it
    only on a crop's first frames (later ones read the key off their own context). Measured on the
    music LM of git 1cd833d: the true key lowered the pitch row's CE of frames 0-10 by 0.075 nats
    against a caption without it, and generated pieces played the asked mode 57 % of the time.
    Added to every frame's input instead, the key is beside each prediction as the melody's chroma
    is; its features are pitch classes, so what the LM learns about one key's scale transfers to
    the others' (docs/music.md)."""

    n_features = 38

    def features(self, attrs: CaptionAttributes) -> torch.Tensor | None:
        return key_features(attrs)


@register_conditioner("caption_instruments")
class CaptionInstrumentConditioner(_PerFrameCaption):
    """The caption's instruments at every frame: the mean of one-hot rows of ``instruments`` (the
    names found as :func:`parse_caption` finds them, longest first), fuse ``sum``; the per-frame
    counterpart of the attribute tokens' instrument slot, as ``caption_key`` is of its key."""

    def __init__(self, dim: int = 256, instruments=INSTRUMENTS) -> None:
        self.instruments = list(instruments)
        if not self.instruments or len(set(self.instruments)) != len(self.instruments):
            raise ConfigError("caption instruments: instruments must be distinct non-empty words")
        self.n_features = len(self.instruments)
        super().__init__(dim)

    def config(self) -> dict:
        return {"dim": self.dim, "instruments": self.instruments}

    def parse(self, text: str) -> CaptionAttributes:
        return parse_caption(text, instruments=self.instruments)

    def features(self, attrs: CaptionAttributes) -> torch.Tensor | None:
        if not attrs.instruments:
            return None
        out = torch.zeros(self.n_features)
        out[[self.instruments.index(n) for n in attrs.instruments]] = 1.0 / len(attrs.instruments)
        return out
