"""Speech from the duration-guided VALL-E (:class:`~codeclm.lm.valle_dur.DurValle`) for
:class:`~codeclm.pipelines.clone.VoiceClone`.

Phonemes and durations of a text come from espeak-ng itself (:class:`codeclm.tokenizers.align.Espeak`,
its phoneme events at the default ``en-us`` voice and rate), the same tokens the model was trained
on, at espeak-ng's default pace divided by ``speed`` (default 1). ``speed="reference"`` scales them
to the reference's speaking rate instead: the reference's frames (after the pipeline's silence
trim) over espeak-ng's frames for the reference transcript, without the silence at their ends,
clamped to ``[0.6, 1.8]``. The shipped model is more intelligible at espeak-ng's pace: on
``benchmarks/tts_eval.py --n 48 --seed 1`` WER 0.958 vs 1.023 at the reference's pace with the same
speaker similarity (the 29 pairs whose references speak slower: 0.96-0.99 vs 1.10); hence the
default (docs/voice.md). The output of each piece has exactly
``sum(durations)`` frames, so nothing is cut and nothing ends early.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from codeclm.errors import CodecLMError
from codeclm.pipelines.longform import window_seed
from codeclm.tokenizers.align import SILENCE, Espeak, durations_from_alignment, scaled_durations
from codeclm.tokenizers.normalize import TextError, normalize_text
from codeclm.tokenizers.sentences import fit_pieces, split_sentences

__all__ = ["check_speed", "espeak_durations", "speaking_rate", "synthesize_dur", "text_plan"]

ESPEAK_VOICE, ESPEAK_RATE = "en-us", 175
RATE_RANGE = (0.6, 1.8)
SPEED_RANGE = (0.5, 2.0)
DEFAULT_SPEED = 1.0
MAX_BATCH = 8
END_FRAMES = 4  # frames of silence kept at the end of each piece (before the pause that joins pieces)


def espeak_durations(text: str, frame_rate: float, language: str = "en") -> tuple[list[str], np.ndarray]:
    """espeak-ng's phoneme tokens of ``text`` and their frames at ``frame_rate``.

    Cached per process: espeak-ng carries a little state from call to call (spans drift by a few
    samples), so the same text always gets the durations of its first rendering here."""
    tokens, dur = _espeak_durations(text, float(frame_rate), language)
    return list(tokens), np.array(dur)


@functools.lru_cache(maxsize=4096)
def _espeak_durations(text: str, frame_rate: float, language: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if language != "en":
        raise TextError(f"the duration-guided model speaks English only, not {language!r}")
    utt = Espeak().synth(normalize_text(text, language), ESPEAK_VOICE, ESPEAK_RATE, 50)
    n = max(1, math.ceil(len(utt.audio) / utt.sample_rate * frame_rate))
    dur = durations_from_alignment(utt.frame_alignment(n, frame_rate), len(utt.tokens))
    return tuple(utt.tokens), tuple(int(x) for x in dur)


def speaking_rate(prompt_frames: int, ref_text: str, frame_rate: float, language: str = "en") -> float:
    """How much slower (> 1) the reference speaks than espeak-ng's default, clamped."""
    tokens, dur = espeak_durations(ref_text, frame_rate, language)
    inner = int(sum(d for t, d in zip(tokens[1:-1], dur[1:-1])))
    if inner < 1:
        return 1.0
    return float(min(max(prompt_frames / inner, RATE_RANGE[0]), RATE_RANGE[1]))


def check_speed(speed) -> float | str:
    """``speed`` as a float in :data:`SPEED_RANGE` or the string ``"reference"``, else a one-line error."""
    if isinstance(speed, str):
        if speed.strip().lower() == "reference":
            return "reference"
        try:
            speed = float(speed)
        except ValueError:
            raise CodecLMError(f"speed must be a number or 'reference', got {speed!r}") from None
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
            or not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise CodecLMError(f"speed must be in [{SPEED_RANGE[0]:g}, {SPEED_RANGE[1]:g}] or 'reference', got {speed!r}")
    return float(speed)


def text_plan(pipe, text: str, language: str, factor: float, prompt_frames: int) -> list[tuple]:
    """``(piece, token ids [L], durations [L])`` for each piece of ``text`` that fits the model."""
    c = pipe.model.config
    budget = c.max_frames - prompt_frames
    cache: dict[str, tuple] = {}

    def plan(piece: str):
        if piece not in cache:
            tokens, dur = espeak_durations(piece, c.frame_rate, language)
            dur = scaled_durations(dur, tokens, factor)
            dur[0] = min(int(dur[0]), 2)  # leading silence: at most 40 ms
            if tokens[-1] == SILENCE:
                dur[-1] = END_FRAMES
            ids = pipe.vocab.encode(tokens, language)  # <lang:xx> + tokens; the language token has no frames
            cache[piece] = (torch.tensor(ids), torch.tensor([0] + [int(x) for x in dur]))
        return cache[piece]

    def fits(piece: str) -> bool:
        try:
            return int(plan(piece)[1].sum()) <= budget
        except TextError:
            return True  # refused later with its own message

    pieces = fit_pieces(split_sentences(text), fits)
    if any(p.split == "words" for p in pieces):
        warnings.warn(f"a sentence is longer than this model speaks at once (about {budget / c.frame_rate:.1f} s "
                      "after the reference); split between words", stacklevel=4)
    out = []
    for p in pieces:
        ids, dur = plan(p.text)
        if int(dur.sum()) > budget:
            raise TextError(f"the text {p.text[:40]!r} is too long for this model even split at words")
        out.append((p, ids, dur))
    return out


def synthesize_dur(pipe, jobs: list[tuple], seeds: list[int | None], temperature: float, top_k: int, top_p: float,
                   progress: bool, speed: float | str | None = None) -> list[torch.Tensor]:
    """Audio per job ``(text, prompt codes, ref_text, language)`` (see the module docstring);
    ``speed`` None is :data:`DEFAULT_SPEED`."""
    c = pipe.model.config
    speed = check_speed(DEFAULT_SPEED if speed is None else speed)
    audios = []
    with pipe._progress(progress, None, "frame", "voice-clone") as on_step:
        for (text, prompt, ref_text, language), seed in zip(jobs, seeds):
            if not isinstance(text, str) or not text.strip():
                raise TextError("the text to speak is empty")
            factor = (speaking_rate(prompt.shape[1], ref_text, c.frame_rate, language) if speed == "reference"
                      else 1.0 / speed)
            plan = text_plan(pipe, text, language, factor, prompt.shape[1])
            codes: list[torch.Tensor] = []
            for start in range(0, len(plan), MAX_BATCH):
                part = plan[start: start + MAX_BATCH]
                gens = [pipe._generator(window_seed(seed, start + j)) for j in range(len(part))]
                codes += pipe.model.generate_batch([x[1] for x in part], [x[2] for x in part], prompt,
                                                   temperature=temperature, top_k=top_k, top_p=top_p,
                                                   do_sample=temperature > 0, generators=gens,
                                                   on_frame=(lambda n: on_step()) if on_step else None)
            parts = []
            with torch.no_grad():
                for j, ((piece, _, _), code) in enumerate(zip(plan, codes)):
                    if code.shape[1] < 1:
                        raise CodecLMError("the model produced no frames")
                    wav = pipe.codec.decode(code[None])[0].float().cpu()
                    parts.append(wav)
                    if j < len(plan) - 1:
                        parts.append(wav.new_zeros(wav.shape[0], round(piece.pause * pipe.sample_rate)))
            audios.append(torch.cat(parts, -1))
    return audios
