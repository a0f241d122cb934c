"""Evaluation of zero-shot voice cloning (VALL-E style TTS): intelligibility, speaker similarity, speed.

>>> pipe = VoiceClone.from_pretrained(None)
>>> evaluate_clone(pipe, read_pairs("pairs.jsonl"))
{"n": 8, "wer": 0.31, "ref_wer": 0.27, "sim_own": 0.81, "sim_other": 0.62, "sim_margin": 0.19, "rtf": 0.4, ...}

A *pair* is a reference clip (whose voice is to be cloned) and a target text:
``(ref_audio_path, ref_text_or_None, target_text, language)`` (tuples or :class:`ClonePair`; an
optional fifth field names the reference's speaker). For each pair the pipeline generates
``pipe.generate(text, ref_audio=path, ref_text=ref_text, seed=seed, language=language)`` (the
same ``seed`` for every pair), which is timed, transcribed with pocketsphinx
(:mod:`~codeclm.asr`) and embedded with Resemblyzer (:mod:`~codeclm.evaluation.speaker`).

The result (a plain dict, JSON-ready, floats rounded to 4 significant digits):

===========  ======================================================================================
n            number of pairs
wer          corpus WER of the outputs' transcripts against the target texts (English pairs only;
             ``None`` when there are none); ``n_wer`` pairs counted
ref_wer      the same ASR's corpus WER on the *references* against their ``ref_text`` (English
             references with a transcript, each distinct one once; ``None`` without any): the
             floor the recogniser itself sets. pocketsphinx is weak on synthetic and telephone
             speech, so read ``wer`` relative to ``ref_wer``
sim_own      mean cosine between each output's speaker embedding and its own reference's
sim_other    mean over outputs of the mean cosine to every *other* reference (references of
             another speaker when both speakers are named, else other files); ``None`` with one
             reference. Embeddings are non-negative, so cosines lie in [0, 1] and unrelated voices
             still score about 0.5-0.7
sim_margin   sim_own - sim_other: how much closer the output is to its own reference than to the
             others (the cloning signal; about 0 for a model that ignores the reference)
rtf          real-time factor: total generation seconds / total generated audio seconds (lower is
             faster; < 1 is faster than real time). The first call's start-up cost is included
             unless ``warmup=True``
seconds      total generated audio seconds; ``gen_seconds`` total generation time
n_silent     outputs without a voice (silent or empty): their similarities count as 0 and their
             transcript as empty
items        only with ``details=True``: one dict per pair (ref, text, hyp, wer, sim_own, ...)
===========  ======================================================================================

:func:`read_pairs` reads pairs from a JSON-lines file, one object per line with keys ``ref``
(audio path, relative to the file's folder), ``text``, and optionally ``ref_text``, ``language``
(default ``"en"``) and ``speaker``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from codeclm.asr import asr_supports, normalize_words, transcribe, word_edit_distance
from codeclm.audio import load_audio
from codeclm.errors import AudioError, CodecLMError
from codeclm.fileio import json_object
from codeclm.evaluation.speaker import cosine, speaker_embedding

__all__ = ["ClonePair", "evaluate_clone", "read_pairs", "check_dependencies"]

_KEYS = ("ref", "ref_text", "text", "language", "speaker")


class ClonePair(NamedTuple):
    """One evaluation item: clone the voice of ``ref`` (audio path) saying ``text``."""

    ref: str
    ref_text: str | None
    text: str
    language: str = "en"
    speaker: str | None = None


def check_dependencies() -> None:
    """Load the recogniser and the speaker encoder now (one-line error if either package is missing)."""
    from codeclm.asr import _decoder
    from codeclm.evaluation.speaker import _encoder

    _decoder()
    _encoder()


def read_pairs(path: str | os.PathLike) -> list[ClonePair]:
    """Pairs from a JSON-lines file (see the module docstring); blank lines are skipped.

    Malformed JSON, a missing or unknown key, a value of the wrong type or a reference file that
    does not exist raises a one-line :class:`CodecLMError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise CodecLMError(f"{path}: no such pairs file" if not path.exists() else f"{path}: not a file")
    base = path.resolve().parent
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CodecLMError(f"{path}: cannot read ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = json_object(line, where, ("ref", "text"), noun="key")
        unknown = sorted(set(obj) - set(_KEYS))
        if unknown:
            raise CodecLMError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
        for key in ("ref", "text", "language"):
            if key in obj and not (isinstance(obj[key], str) and obj[key].strip()):
                raise CodecLMError(f"{where}: {key!r} must be a non-empty string")
        for key in ("ref_text", "speaker"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise CodecLMError(f"{where}: {key!r} must be a string or null")
        ref = Path(obj["ref"])
        ref = ref if ref.is_absolute() else base / ref
        if not ref.is_file():
            raise CodecLMError(f"{where}: reference audio {ref} not found")
        pairs.append(ClonePair(str(ref), obj.get("ref_text") or None, obj["text"],
                               obj.get("language", "en"), obj.get("speaker")))
    if not pairs:
        raise CodecLMError(f"{path}: no pairs (the file is empty)")
    return pairs


def _as_pair(item, index: int) -> ClonePair:
    if isinstance(item, ClonePair):
        pair = item
    else:
        if not isinstance(item, (tuple, list)) or not 3 <= len(item) <= 5:
            raise CodecLMError(f"pair {index}: expected (ref_audio, ref_text or None, text, language), got {item!r:.80}")
        pair = ClonePair(str(item[0]), *item[1:])
    if not isinstance(pair.text, str) or not pair.text.strip():
        raise CodecLMError(f"pair {index}: the target text must be a non-empty string")
    if pair.ref_text is not None and not isinstance(pair.ref_text, str):
        raise CodecLMError(f"pair {index}: ref_text must be a string or None")
    if not isinstance(pair.language, str) or not pair.language:
        raise CodecLMError(f"pair {index}: language must be a string code such as 'en'")
    return pair._replace(ref=str(pair.ref), ref_text=pair.ref_text or None)


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}") if abs(x) < 10 ** digits else round(x, 1)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _output(audio, index: int) -> torch.Tensor:
    """The pipeline's output as float32 CPU ``[C, N]``; refuses non-tensors and NaN."""
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor):
        raise CodecLMError(f"pair {index}: generate() returned {type(audio).__name__}, not a tensor [channels, samples]")
    audio = audio.detach().float().cpu()
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() != 2:
        raise CodecLMError(f"pair {index}: generate() returned shape {tuple(audio.shape)}, not [channels, samples]")
    if audio.numel() and not torch.isfinite(audio).all():
        raise CodecLMError(f"pair {index}: generate() returned NaN or infinite samples")
    return audio


def _embed(wav: torch.Tensor, sample_rate: int) -> np.ndarray | None:
    """Speaker embedding, or None for audio without a voice (empty or silent)."""
    if wav.shape[-1] == 0:
        return None
    try:
        return speaker_embedding(wav, sample_rate)
    except AudioError:
        return None


def evaluate_clone(
    pipe,
    pairs: Iterable[ClonePair | tuple],
    seed: int = 0,
    progress: bool = True,
    warmup: bool = False,
    details: bool = False,
    sampling: dict | None = None,
) -> dict:
    """Generate every pair with ``pipe`` and measure WER, speaker similarity and real-time factor.

    ``pipe`` needs ``sample_rate`` and ``generate(text, ref_audio=..., ref_text=..., seed=...,
    language=...)`` returning a float tensor ``[channels, samples]`` (a
    :class:`codeclm.pipelines.clone.VoiceClone` or anything shaped like it). ``warmup`` runs the
    first pair once untimed before measuring. ``details`` adds per-pair rows under ``"items"``.
    ``sampling`` (``temperature``, ``top_k``, ``top_p``) goes to every ``generate`` call; None: the
    pipeline's own defaults.
    Returns the dict described in the module docstring. Bad pairs, unreadable references and
    outputs that are not finite audio tensors raise one-line :class:`CodecLMError` s.
    """
    pairs = [_as_pair(p, i) for i, p in enumerate(pairs)]
    sampling = dict(sampling or {})
    if not pairs:
        raise CodecLMError("no pairs to evaluate")
    try:
        sr = int(pipe.sample_rate)
    except (AttributeError, TypeError, ValueError):
        raise CodecLMError(f"{type(pipe).__name__} has no integer sample_rate") from None
    if sr <= 0:
        raise CodecLMError(f"pipeline sample_rate must be positive, got {sr}")
    check_dependencies()

    # references: one embedding per file, one ASR pass per (file, transcript)
    refs: dict[str, tuple[np.ndarray | None, str | None]] = {}  # path -> (embedding, speaker)
    ref_edits = ref_words = 0
    seen_ref_text = set()
    for pair in pairs:
        key = str(Path(pair.ref).resolve())
        need_asr = pair.ref_text is not None and asr_supports(pair.language) and (key, pair.ref_text) not in seen_ref_text
        if key in refs and not need_asr:
            continue
        wav, ref_sr = load_audio(pair.ref)
        if key not in refs:
            refs[key] = (_embed(wav, ref_sr), pair.speaker)
        if need_asr:
            seen_ref_text.add((key, pair.ref_text))
            words = normalize_words(pair.ref_text, pair.language)
            ref_edits += word_edit_distance(words, normalize_words(transcribe(wav, ref_sr), pair.language))
            ref_words += len(words)

    if warmup:
        p = pairs[0]
        pipe.generate(p.text, ref_audio=p.ref, ref_text=p.ref_text, seed=seed, language=p.language, **sampling)

    items = []
    edits = words_total = 0
    gen_seconds = audio_seconds = 0.0
    bar = tqdm(pairs, desc="eval clone", unit="pair", disable=not progress, dynamic_ncols=True)
    try:
        for i, pair in enumerate(bar):
            start = time.perf_counter()
            out = pipe.generate(pair.text, ref_audio=pair.ref, ref_text=pair.ref_text, seed=seed,
                                language=pair.language, **sampling)
            out = _output(out, i)  # .cpu() waits for an accelerator, so it is inside the timing
            busy = time.perf_counter() - start
            seconds = out.shape[-1] / sr
            gen_seconds += busy
            audio_seconds += seconds

            item = {"ref": pair.ref, "text": pair.text, "seconds": _round(seconds), "gen_seconds": _round(busy)}
            if asr_supports(pair.language):
                hyp = transcribe(out, sr) if out.shape[-1] else ""
                target = normalize_words(pair.text, pair.language)
                e = word_edit_distance(target, normalize_words(hyp, pair.language))
                edits += e
                words_total += len(target)
                item.update(hyp=hyp, wer=_round(e / len(target)) if target else None)

            key = str(Path(pair.ref).resolve())
            emb = _embed(out, sr)
            own_emb, own_spk = refs[key]
            others = [e for k, (e, spk) in refs.items()
                      if k != key and not (own_spk is not None and spk is not None and spk == own_spk)]
            item["silent"] = emb is None
            item["sim_own"] = cosine(emb, own_emb) if emb is not None and own_emb is not None else 0.0
            if others:
                item["sim_other"] = (_mean([cosine(emb, o) if o is not None else 0.0 for o in others])
                                     if emb is not None else 0.0)
            items.append(item)
    finally:
        bar.close()

    sim_own = _mean([it["sim_own"] for it in items])
    other = [it["sim_other"] for it in items if "sim_other" in it]
    sim_other = _mean(other)  # over outputs that have another reference to compare with
    result = {
        "n": len(items),
        "wer": _round(edits / words_total) if words_total else None,
        "n_wer": sum(1 for it in items if "hyp" in it),
        "ref_wer": _round(ref_edits / ref_words) if ref_words else None,
        "n_ref_wer": len(seen_ref_text),
        "sim_own": _round(sim_own),
        "sim_other": _round(sim_other),
        "sim_margin": _round(sim_own - sim_other) if sim_own is not None and sim_other is not None else None,
        "rtf": _round(gen_seconds / audio_seconds) if audio_seconds > 0 else None,
        "seconds": _round(audio_seconds),
        "gen_seconds": _round(gen_seconds),
        "n_refs": len(refs),
        "n_silent": sum(1 for it in items if it["silent"]),
    }
    if details:
        for it in items:
            for k in ("sim_own", "sim_other"):
                if k in it:
                    it[k] = _round(it[k])
        result["items"] = items
    return result
