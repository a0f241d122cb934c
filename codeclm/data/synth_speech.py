"""Synthetic speech with the ``espeak-ng`` binary: many voices, transcripts, deterministic.

Each utterance is a sentence generated from templates and word lists (per language) and spoken by
one *speaker*: an espeak-ng voice, a voice variant (``+m1`` .. ``+m7``, ``+f1`` .. ``+f5``, ...) and
a base pitch. The speaker id is ``voice+variant@pPITCH`` (e.g. ``en-us+f2@p62``). Variants that a
voice silently ignores (espeak-ng's ``en-gb`` ignores them all; the notes name ``en-gb+m3`` and
``en-gb+f4``) are detected once by rendering a probe sentence and comparing the bytes, so they are
never counted as distinct speakers.

Everything is a function of ``seed`` and the utterance number, so a run that was interrupted can
be started again: files that already exist are kept (resumable), the manifest is rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from codeclm.data.manifest import AudioRecord, write_manifest
from codeclm.errors import CodecLMError

__all__ = ["synth_speech", "speakers_for", "make_sentence", "SUPPORTED_LANGUAGES", "Speaker"]

# espeak-ng voices used for each language code (the language code itself is a voice).
_VOICES = {
    "en-us": ("en-us", "en-us-nyc"),
    "en-gb": ("en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan"),
    "de": ("de",),
    "fr": ("fr",),
    "es": ("es",),
    "it": ("it",),
}
_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7",
             "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt", "+klatt2", "+croak")
_PITCHES = (38, 50, 62)
_PROBE = "the quick brown fox jumps over the lazy dog"

_EN = dict(
    det="the a this that every one my your our their".split(),
    adj=("small old new red green quiet bright cold warm heavy happy tired clever "
         "young strange empty busy gentle sudden distant wooden silver").split(),
    noun=("dog cat house river city garden window teacher doctor child letter train "
          "mountain kitchen table story song road forest market engine island bird "
          "computer farmer painter ship bridge morning").split(),
    verb=("found saw painted carried opened watched followed closed cleaned built "
          "visited moved wrote heard liked sold bought helped").split(),
    adv="slowly quickly quietly carefully suddenly happily again today yesterday soon".split(),
    place=["near the station", "in the park", "by the sea", "under the bridge", "at home",
        "in the morning", "after dinner", "before noon", "on the hill", "in the rain"],
    num=("two three four five six seven eight nine ten twelve twenty forty").split(),
)
_EN_TEMPLATES = (
    "{Det} {adj} {noun} {verb} {det} {noun} {place}.",
    "{Det} {noun} {verb} {det} {adj} {noun} {adv}.",
    "Did {det} {noun} really see {num} {nouns} {place}?",
    "We {verb} {num} {adj} {nouns} {place}.",
    "{Place}, {det} {noun} {verb} {det} {noun}.",
    "Please call the {noun} {adv}, the {adj} {noun} is waiting.",
    "I think {det} {noun} {verb} it {adv}, {place}.",
)
# Short word lists for other languages: sentences are random word sequences (for sound, not sense).
_WORDS = {
    "de": ("der die das ein eine Haus Hund Katze Stadt Garten Fenster Lehrer Kind Brief Zug "
           "Berg Wald Lied Strasse klein alt neu rot gruen schnell langsam heute morgen "
           "sieht findet baut oeffnet schreibt hoert kauft und aber mit nach unter").split(),
    "fr": ("le la un une maison chien chat ville jardin fenetre maitre enfant lettre train "
           "montagne foret chanson route petit vieux nouveau rouge vert vite lentement "
           "aujourd'hui demain voit trouve construit ouvre ecrit entend et mais avec dans sous").split(),
    "es": ("el la un una casa perro gato ciudad jardin ventana maestro nino carta tren "
           "montana bosque cancion calle pequeno viejo nuevo rojo verde rapido despacio "
           "hoy manana ve encuentra construye abre escribe oye y pero con en bajo").split(),
    "it": ("il la un una casa cane gatto citta giardino finestra maestro bambino lettera "
           "treno montagna bosco canzone strada piccolo vecchio nuovo rosso verde presto "
           "piano oggi domani vede trova costruisce apre scrive sente e ma con in sotto").split(),
}
SUPPORTED_LANGUAGES = tuple(_VOICES)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: espeak-ng voice, variant ('' or '+m3'), base pitch (0-99)."""

    language: str
    voice: str
    variant: str
    pitch: int
    speed: int

    @property
    def id(self) -> str:
        return f"{self.voice}{self.variant}@p{self.pitch}"


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CodecLMError("espeak-ng not found on PATH: install it with apt-get install espeak-ng")
    return exe


def _run_espeak(args: list[str], what: str) -> None:
    try:
        proc = subprocess.run([_espeak(), *args], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise CodecLMError(f"espeak-ng timed out on {what}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise CodecLMError(f"espeak-ng failed on {what}: {msg[0] if msg else 'exit code %d' % proc.returncode}")


@functools.lru_cache(maxsize=None)
def _distinct_variants(voice: str) -> tuple[str, ...]:
    """The variants of ``voice`` whose probe rendering differs from every earlier one."""
    seen, keep = set(), []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "probe.wav")
        for variant in _VARIANTS:
            _run_espeak(["-v", voice + variant, "-w", out, _PROBE], f"voice {voice}{variant}")
            digest = hashlib.sha1(Path(out).read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                keep.append(variant)
    return tuple(keep)


def speakers_for(languages: Sequence[str]) -> list[Speaker]:
    """All distinct speakers for ``languages`` (voices x audible variants x pitches), sorted."""
    speakers = []
    for lang in languages:
        if lang not in _VOICES:
            raise CodecLMError(f"language {lang!r} is not supported by synth_speech "
                               f"(choose from {', '.join(SUPPORTED_LANGUAGES)})")
        for voice in _VOICES[lang]:
            for v, variant in enumerate(_distinct_variants(voice)):
                for p, pitch in enumerate(_PITCHES):
                    speed = 145 + 10 * ((v + p) % 5)  # 145..185 words per minute
                    speakers.append(Speaker(lang, voice, variant, pitch, speed))
    return speakers


_SLOT = re.compile(r"\{(\w+)\}")
_AN = re.compile(r"\b([Aa]) ([aeiouAEIOU])")


def _fill(slot: str, rng: np.random.Generator) -> str:
    """A fresh word for one template slot: ``{noun}``, ``{Noun}`` (capitalized), ``{nouns}``."""
    key = slot.lower()
    plural = key.endswith("s") and key[:-1] in _EN
    word = str(rng.choice(_EN[key[:-1] if plural else key]))
    if plural:
        word = word[:-1] + "ies" if word.endswith("y") and word[-2] not in "aeiou" else (
            word + "es" if word.endswith(("s", "x", "ch", "sh")) else word + "s")
    return word[0].upper() + word[1:] if slot[0].isupper() else word


def make_sentence(language: str, rng: np.random.Generator) -> str:
    """A sentence in ``language`` drawn with ``rng`` (templates for English, word lists else)."""
    if language.startswith("en"):
        template = _EN_TEMPLATES[rng.integers(len(_EN_TEMPLATES))]
        text = _SLOT.sub(lambda m: _fill(m.group(1), rng), template)
        return _AN.sub(lambda m: m.group(1) + "n " + m.group(2), text)
    words = _WORDS.get(language)
    if words is None:
        raise CodecLMError(f"language {language!r} has no word list (choose from {', '.join(SUPPORTED_LANGUAGES)})")
    chosen = [str(w) for w in rng.choice(words, size=int(rng.integers(4, 10)))]
    chosen[0] = chosen[0][0].upper() + chosen[0][1:]
    return " ".join(chosen) + "."


def _plan(i: int, seed: int, languages: Sequence[str], speakers: dict[str, list[Speaker]]):
    """Language, speaker, speed and sentence of utterance ``i``: depends on (seed, i) only."""
    rng = np.random.default_rng([seed, i])
    lang = languages[i % len(languages)]
    spk = speakers[lang][int(rng.integers(len(speakers[lang])))]
    speed = int(spk.speed + rng.integers(-10, 11))
    return lang, spk, speed, make_sentence(lang, rng)


def synth_speech(
    out_dir: str | os.PathLike,
    n_utterances: int,
    languages: Sequence[str] = ("en-us", "en-gb"),
    seed: int = 0,
    progress: bool = True,
) -> list[AudioRecord]:
    """Speak ``n_utterances`` generated sentences into ``out_dir/wavs`` and write ``manifest.jsonl``.

    Files are named ``s{seed}_{i:06d}.wav`` (22,050 Hz mono); existing ones are kept, so an
    interrupted run resumes. Records carry ``text``, ``speaker`` and ``language``.
    Raises :class:`CodecLMError` if espeak-ng is missing or a language is unsupported.
    """
    if n_utterances < 0:
        raise CodecLMError(f"n_utterances must be >= 0, got {n_utterances}")
    languages = tuple(languages)
    if not languages:
        raise CodecLMError("synth_speech needs at least one language")
    _espeak()
    by_lang: dict[str, list[Speaker]] = {}
    for spk in speakers_for(languages):
        by_lang.setdefault(spk.language, []).append(spk)
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n_utterances), desc="espeak-ng", unit="utt", disable=not progress):
        lang, spk, speed, text = _plan(i, seed, languages, by_lang)
        path = wav_dir / f"s{seed}_{i:06d}.wav"
        if not path.exists():
            tmp = wav_dir / f".{path.name}.tmp.wav"
            _run_espeak(["-v", spk.voice + spk.variant, "-s", str(speed), "-p", str(spk.pitch),
                         "-w", str(tmp), text], f"utterance {i} ({spk.id})")
            os.replace(tmp, path)
        records.append(AudioRecord.from_info(path, text=text, speaker=spk.id, language=lang))
    write_manifest(records, out_dir / "manifest.jsonl")
    return records


FLITE_VOICES = ("kal16", "awb", "rms", "slt")  # awb, rms, slt are built from CMU ARCTIC speakers


def synth_flite(
    out_dir: str | os.PathLike,
    n_utterances: int,
    voices: Sequence[str] = FLITE_VOICES,
    seed: int = 0,
    progress: bool = True,
) -> list[AudioRecord]:
    """As :func:`synth_speech` with ``flite``'s English voices (16 kHz mono), speaking rate varied
    per utterance; files ``f{seed}_{i:06d}.wav``, resumable, records with text/speaker/language."""
    if n_utterances < 0:
        raise CodecLMError(f"n_utterances must be >= 0, got {n_utterances}")
    exe = shutil.which("flite")
    if exe is None:
        raise CodecLMError("flite not found on PATH: install it with apt-get install flite")
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n_utterances), desc="flite", unit="utt", disable=not progress):
        rng = np.random.default_rng([seed, i, 7])
        voice = voices[int(rng.integers(len(voices)))]
        stretch = float(rng.uniform(0.85, 1.2))
        text = make_sentence("en-us", rng)
        path = wav_dir / f"f{seed}_{i:06d}.wav"
        if not path.exists():
            tmp = wav_dir / f".{path.name}.tmp.wav"
            try:
                proc = subprocess.run([exe, "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
                                       "-t", text, "-o", str(tmp)], capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                raise CodecLMError(f"flite timed out on utterance {i}") from None
            if proc.returncode != 0 or not tmp.is_file():
                raise CodecLMError(f"flite failed on utterance {i} (voice {voice}): {proc.stderr.strip()[:200]}")
            os.replace(tmp, path)
        records.append(AudioRecord.from_info(path, text=text, speaker=f"flite-{voice}", language="en-us"))
    write_manifest(records, out_dir / "manifest.jsonl")
    return records
