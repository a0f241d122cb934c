"""Offline English speech recognition (pocketsphinx) and word error rate.

>>> transcribe(wav, 24000)                        # float [C, N] or [N] at any rate
'hello world this is a test'
>>> word_error_rate(["Hello, world!"], ["hello word"])
0.5

:func:`transcribe` runs pocketsphinx (pip package ``pocketsphinx`` >= 5, whose wheel ships the
US-English acoustic model, language model and dictionary) on the audio mixed to mono, resampled to
16 kHz with soxr, peak-normalised and quantised to int16. It needs no network and no downloads; one
decoder is built on first use (about 0.3 s) and reused, behind a lock. It is a small, old
recogniser: on clean read speech it is usable, on espeak-ng voices and 8 kHz telephone prompts it
makes many errors (tens of percent WER), so compare WERs of outputs against the WER it gets on the
references themselves (``ref_wer`` in :mod:`~codeclm.evaluation.clone_eval`), not against zero.

:func:`normalize_words` puts reference texts and transcripts into one form before they are
compared: :func:`codeclm.tokenizers.normalize.normalize_text` (numbers, dates, currency,
abbreviations become words), then lower case, hyphens become spaces, punctuation is dropped
(apostrophes inside words are kept: ``don't``). :func:`word_error_rate` is the corpus WER: total
word-level Levenshtein distance / total reference words.

Errors are one-line :class:`~codeclm.errors.CodecLMError` s: :class:`MissingPackageError` names
the pip command when pocketsphinx is not installed, :class:`ASRError` a language it cannot do.

The module sits below both its users: the pipelines (:class:`~codeclm.pipelines.clone.VoiceClone`
transcribes a reference clip given without its text) and the evaluation (word error rates);
:mod:`codeclm.evaluation.asr` re-exports it under its former name.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence

import numpy as np
import torch

from codeclm.audio import check_waveform, resample
from codeclm.errors import CodecLMError

__all__ = ["ASR_SAMPLE_RATE", "ASR_LANGUAGES", "ASRError", "MissingPackageError", "transcribe",
           "asr_supports", "normalize_words", "vocabulary_of", "word_edit_distance", "word_error_rate"]

ASR_SAMPLE_RATE = 16000
ASR_LANGUAGES = ("en",)  # pocketsphinx's bundled model: US English

_SILENCE_PEAK = 1e-4  # -80 dBFS: quieter audio is digital silence, transcribed as ""
_LOCK = threading.Lock()


class ASRError(CodecLMError, ValueError):
    """Speech recognition that cannot run: an unsupported language, a bad input."""


class MissingPackageError(CodecLMError, ImportError):
    """An optional package (pocketsphinx, resemblyzer) is not installed (the message names the pip command)."""


def asr_supports(language: str) -> bool:
    """True when :func:`transcribe` can recognise ``language`` ("en", "en-us", "EN_gb" ...)."""
    return isinstance(language, str) and language.strip().lower().replace("_", "-").split("-")[0] in ASR_LANGUAGES


@functools.lru_cache(maxsize=1)
def _decoder():
    try:
        from pocketsphinx import Decoder
    except ImportError:
        raise MissingPackageError("speech recognition needs the 'pocketsphinx' package (>= 5): "
                                  "pip install 'pocketsphinx>=5'") from None
    try:
        return Decoder(loglevel="FATAL")  # the bundled en-us model; FATAL: no INFO log on stderr
    except Exception as exc:  # pocketsphinx raises RuntimeError for a broken install
        raise ASRError(f"pocketsphinx could not load its default en-us model ({exc})") from None


def mono_16k(wav, sample_rate: int, what: str = "audio") -> torch.Tensor:
    """``wav`` (float tensor or array, ``[C, N]`` or ``[N]``) mixed to mono and resampled to 16 kHz:
    a float32 tensor ``[N']``. Bad shapes and rates are :class:`ASRError` s, empty or NaN audio an
    :class:`~codeclm.errors.AudioError`; ``what`` names the input in messages."""
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    if not isinstance(wav, torch.Tensor):
        raise ASRError(f"{what}: expected a float tensor [channels, samples], got {type(wav).__name__}")
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ASRError(f"{what}: expected audio [channels, samples] or [samples], got shape {tuple(wav.shape)}")
    if int(sample_rate) <= 0:
        raise ASRError(f"{what}: sample_rate must be positive, got {sample_rate}")
    wav = wav.detach().float().cpu()
    check_waveform(wav, what)
    return resample(wav.mean(dim=0), int(sample_rate), ASR_SAMPLE_RATE).float()


def _to_pcm16(wav, sample_rate: int) -> bytes:
    """Mono, 16 kHz, peak-normalised int16 bytes of ``wav`` (``[C, N]`` or ``[N]``); b"" for silence."""
    mono = mono_16k(wav, sample_rate, "transcribe")
    peak = float(mono.abs().max())
    if peak <= _SILENCE_PEAK:
        return b""
    mono = mono * (0.9 / peak)  # gain does not change what was said; quiet outputs keep their resolution
    return (mono.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()


@functools.lru_cache(maxsize=8)
def _vocabulary_decoder(words: tuple[str, ...]):
    """A decoder whose search is a JSGF loop over ``words`` (those in its dictionary): any sequence
    of them, nothing else. Restricting the recogniser to the test sentences' vocabulary makes the
    old pocketsphinx usable on synthetic and coded speech."""
    _decoder()  # a missing package or a broken install fails here, with the same messages
    from pocketsphinx import Decoder

    decoder = Decoder(loglevel="FATAL")
    known = sorted({w for w in words if decoder.lookup_word(w) is not None})
    if not known:
        raise ASRError("none of the vocabulary's words is in pocketsphinx's dictionary")
    grammar = "#JSGF V1.0;\ngrammar vocabulary;\npublic <s> = ( " + " | ".join(known) + " )* ;\n"
    decoder.add_jsgf_string("vocabulary", grammar)
    decoder.activate_search("vocabulary")
    return decoder


def vocabulary_of(texts: Sequence[str], language: str = "en") -> tuple[str, ...]:
    """The sorted set of normalised words of ``texts`` (the ``vocabulary`` of :func:`transcribe`)."""
    return tuple(sorted({w for t in texts for w in normalize_words(t, language)}))


def transcribe(wav: torch.Tensor, sample_rate: int, language: str = "en",
               vocabulary: Sequence[str] | None = None) -> str:
    """English words recognised in ``wav`` (float ``[C, N]`` or ``[N]`` at ``sample_rate``).

    Returns lower-case words separated by single spaces ("" when nothing was recognised, and for
    digital silence: peak below -80 dBFS). ``vocabulary`` (e.g. :func:`vocabulary_of` the test
    sentences) restricts recognition to a loop over those words instead of the full language
    model. ``language`` other than English raises :class:`ASRError`; a missing pocketsphinx raises
    :class:`MissingPackageError` (also for silence: the install is checked first); empty or NaN
    audio an :class:`~codeclm.errors.AudioError`.
    """
    if not asr_supports(language):
        raise ASRError(f"speech recognition supports only English (pocketsphinx en-us), not {language!r}")
    decoder = _decoder() if vocabulary is None else _vocabulary_decoder(tuple(sorted(set(vocabulary))))
    pcm = _to_pcm16(wav, sample_rate)
    if not pcm:  # silence: pocketsphinx would still hallucinate a word or two
        return ""
    with _LOCK:
        # pocketsphinx adapts its cepstral mean across utterances: start every call from the
        # model's initial estimate, so a transcript never depends on what was transcribed before
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
    return " ".join(hyp.hypstr.lower().split()) if hyp is not None else ""


_DROP = re.compile(r"[^\w' ]+")  # everything but letters, digits, underscore, apostrophe, space


def normalize_words(text: str, language: str = "en") -> list[str]:
    """``text`` as a list of lower-case words for WER: numbers, dates and abbreviations spelled
    out (:func:`~codeclm.tokenizers.normalize.normalize_text`; languages it does not know get
    digits spelled by num2words when possible), hyphens as spaces, punctuation dropped. Empty or
    punctuation-only text gives ``[]``."""
    if not isinstance(text, str):
        raise ASRError(f"text must be a string, got {type(text).__name__}")
    from codeclm.tokenizers.normalize import TextError, normalize_text

    try:
        s = normalize_text(text, language)
    except TextError:  # empty text, or a language normalize_text does not cover
        s = text
        if re.search(r"\d", s):
            try:
                from num2words import num2words

                code = language.strip().lower().replace("_", "-").split("-")[0]
                s = re.sub(r"\d+", lambda m: " " + num2words(int(m.group(0)), lang=code) + " ", s)
            except (ImportError, NotImplementedError, AttributeError):
                pass  # keep the digits: they still compare equal with themselves
    s = s.lower().replace("-", " ").replace("_", " ")
    s = s.replace("\u2019", "'").replace("`", "'")
    s = _DROP.sub(" ", s)
    return [w.strip("'") for w in s.split() if w.strip("'")]


def word_edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(refs: Sequence[str] | str, hyps: Sequence[str] | str, language: str = "en") -> float:
    """Corpus WER: sum of word edit distances / sum of reference words, after :func:`normalize_words`.

    ``refs`` and ``hyps`` are lists of the same length (or two strings). It can exceed 1 (many
    insertions). Raises :class:`ASRError` when the lengths differ or the references hold no words.
    """
    if isinstance(refs, str):
        refs = [refs]
    if isinstance(hyps, str):
        hyps = [hyps]
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise ASRError(f"word_error_rate needs as many hypotheses as references, got {len(hyps)} and {len(refs)}")
    edits = words = 0
    for ref, hyp in zip(refs, hyps):
        r, h = normalize_words(ref, language), normalize_words(hyp, language)
        edits += word_edit_distance(r, h)
        words += len(r)
    if words == 0:
        raise ASRError("word_error_rate: the references hold no words")
    return edits / words
