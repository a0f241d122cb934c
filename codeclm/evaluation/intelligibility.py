"""Round-trip intelligibility of a codec: ASR word error rate before and after coding, beside Opus.

>>> items = unseen_voice_sentences(n_sentences=3)          # espeak-ng / flite / Festival voices
>>> result = evaluate_intelligibility(codec, items, bandwidths=[1.5, 3, 6, 12], opus_kbps=[6, 12])
>>> result["original_wer"], result["codec"]["3"], result["opus"]["6"]

The recogniser is pocketsphinx restricted to the vocabulary of the test sentences
(:func:`codeclm.asr.transcribe` with ``vocabulary``): a word loop, so WER measures
whether the words can still be told apart, not the old recogniser's language model. The same ASR
and grammar score the originals, each codec bandwidth and each Opus bitrate, so the differences
are what coding destroyed.

The voices are ones no shipped codec was trained on: espeak-ng's Caribbean and West Midlands
English (with two variants each), flite's 8 kHz ``kal`` and Festival's ``kal_diphone`` (the
codec recipes train on other espeak-ng voices, flite's kal16/awb/rms/slt and no Festival voice).
Sentences come from the synthetic-speech templates with a seed of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codeclm.asr import transcribe, vocabulary_of, word_error_rate
from codeclm.audio import load_audio
from codeclm.baselines import opus_available, opus_roundtrip
from codeclm.errors import CodecLMError
from codeclm.evaluation.codec_eval import roundtrip

__all__ = ["SpokenItem", "UNSEEN_VOICES", "unseen_voice_sentences", "evaluate_intelligibility"]

# (engine, voice): not in any codec training recipe of this repository
UNSEEN_VOICES = (("espeak-ng", "en-029"), ("espeak-ng", "en-029+f3"), ("espeak-ng", "en-gb-x-gbcwmd"),
                 ("espeak-ng", "en-gb-x-gbcwmd+f2"), ("flite", "kal"), ("festival", "kal_diphone"))
SENTENCE_SEED = 20_261_201


@dataclass
class SpokenItem:
    """One test utterance: its audio (mono, ``sample_rate``), transcript and voice."""

    wav: torch.Tensor  # [1, T]
    sample_rate: int
    text: str
    voice: str


def _speak(engine: str, voice: str, text: str, path: str) -> None:
    if engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice, "-w", path, text]
    elif engine == "flite":
        cmd = ["flite", "-voice", voice, "-t", text, "-o", path]
    elif engine == "festival":
        cmd = ["text2wave", "-eval", f"(voice_{voice})", "-o", path]
    else:
        raise CodecLMError(f"unknown speech engine {engine!r}")
    if shutil.which(cmd[0]) is None:
        raise CodecLMError(f"{cmd[0]} not found on PATH (apt-get install {'festival festvox-kallpc16k' if engine == 'festival' else engine})")
    proc = subprocess.run(cmd, input=text if engine == "festival" else None, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not os.path.isfile(path):
        raise CodecLMError(f"{engine} ({voice}) failed: {(proc.stderr or '').strip()[:200]}")


def unseen_voice_sentences(n_sentences: int = 3, voices: Sequence[tuple[str, str]] = UNSEEN_VOICES,
                           sample_rate: int = 24_000, seed: int = SENTENCE_SEED) -> list[SpokenItem]:
    """``n_sentences`` template sentences spoken by each of ``voices`` (the same sentences for
    every voice), resampled to ``sample_rate``. Voices whose engine is missing are skipped; at
    least one must be there."""
    from codeclm.data.synth_speech import make_sentence

    rng = np.random.default_rng(seed)
    texts = [make_sentence("en-us", rng) for _ in range(n_sentences)]
    items, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, voice in voices:
            exe = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}.get(engine, engine)
            if shutil.which(exe) is None:
                missing.append(engine)
                continue
            for i, text in enumerate(texts):
                path = os.path.join(tmp, f"{len(items)}.wav")
                _speak(engine, voice, text, path)
                wav, _ = load_audio(path, sample_rate, 1)
                items.append(SpokenItem(wav, sample_rate, text, f"{engine}:{voice}"))
    if not items:
        raise CodecLMError(f"no speech engine found ({', '.join(sorted(set(missing)))}): apt-get install espeak-ng")
    return items


def evaluate_intelligibility(codec, items: Sequence[SpokenItem], bandwidths: Sequence[float] = (1.5, 3.0, 6.0, 12.0),
                             opus_kbps: Sequence[float] = (6.0, 12.0), progress: bool = False) -> dict:
    """WER of the originals, of ``codec`` at each bandwidth and of Opus at each bitrate, all with
    the vocabulary-restricted ASR. ``items`` must be at ``codec.sample_rate``. Returns a JSON-ready
    dict: ``original_wer``, ``codec`` and ``opus`` ({kbps: wer}), ``per_voice`` original/codec WERs,
    ``utterances``, ``voices``."""
    if not items:
        raise CodecLMError("intelligibility: no utterances to evaluate")
    for it in items:
        if it.sample_rate != codec.sample_rate:
            raise CodecLMError(f"intelligibility: items are at {it.sample_rate} Hz, the codec at {codec.sample_rate} Hz")
    refs = [it.text for it in items]
    vocab = vocabulary_of(refs)

    def wer(wavs: Sequence[torch.Tensor], subset: Sequence[int] | None = None) -> float:
        idx = range(len(items)) if subset is None else subset
        hyps = [transcribe(wavs[i], items[i].sample_rate, vocabulary=vocab) for i in idx]
        return round(word_error_rate([refs[i] for i in idx], hyps), 4)

    systems: dict[str, list[torch.Tensor]] = {"original": [it.wav for it in items]}
    for b in bandwidths:
        systems[f"codec@{b:g}"] = [roundtrip(codec, it.wav, b) for it in items]
    opus_ok = opus_available()
    if opus_ok:
        for k in opus_kbps:
            systems[f"opus@{k:g}"] = [opus_roundtrip(it.wav, it.sample_rate, k)[0] for it in items]
    scores = {name: wer(wavs) for name, wavs in systems.items()}
    voices = sorted({it.voice for it in items})
    per_voice = {}
    for v in voices:
        sub = [i for i, it in enumerate(items) if it.voice == v]
        per_voice[v] = {name: wer(wavs, sub) for name, wavs in systems.items() if not name.startswith("opus")}
    return {
        "asr": "pocketsphinx en-us, JSGF word loop over the sentences' vocabulary",
        "utterances": len(items), "voices": voices, "vocabulary": len(vocab),
        "original_wer": scores["original"],
        "codec": {f"{b:g}": scores[f"codec@{b:g}"] for b in bandwidths},
        "opus": {f"{k:g}": scores[f"opus@{k:g}"] for k in opus_kbps} if opus_ok else None,
        "per_voice": per_voice,
    }
