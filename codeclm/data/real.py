"""Real recordings that codeclm may train on, from Debian packages, and a held-out split.

* ``asterisk-core-sounds-en-wav``: one US-English speaker (Allison Smith), 568 telephone prompts,
  8 kHz mono WAV, ~25 min. Transcripts come from the package's ``core-sounds-en.txt`` (installed
  with ``asterisk-core-sounds-en``), else from file names for digits, letters and the phonetic
  alphabet; bracketed non-speech (``[beep tone]``, silences) gets no text.
* ``wesnoth-1.16-music``: 41 game soundtrack tracks, OGG Vorbis 44.1 kHz stereo, ~128 min.

Other recordings (LibriTTS, VCTK, ...) stay out of training so evaluations on unseen audio stay
honest; :func:`split_held_out` splits any record list by a hash of each file's name, so the same
files are held out on every machine and every run.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

from codeclm.data.manifest import AudioRecord, write_manifest
from codeclm.errors import CodecLMError

__all__ = ["asterisk_speech", "asterisk_other_speech", "klettres_speech", "wesnoth_music", "split_held_out",
           "write_split_manifests", "LICENSES", "ASTERISK_DIRS", "ASTERISK_LANGUAGES", "WESNOTH_GLOBS"]

LICENSES = {
    "asterisk-core-sounds-en-wav": "CC-BY-SA-3.0 (recorded by Allison Smith, funded by Digium, Inc.)",
    "asterisk-core-sounds-es-wav": "CC-BY-SA-3.0 (Spanish prompts, Allison Smith)",
    "asterisk-core-sounds-it-wav": "CC-BY-SA-3.0 (Italian prompts, a male speaker)",
    "asterisk-core-sounds-ru-wav": "CC-BY-SA-3.0 (Russian prompts, a female speaker)",
    "klettres-data": "GPL-2+ / CC0 per /usr/share/doc/klettres-data/copyright (letters and syllables, ~20 languages)",
    "wesnoth-1.16-music": "GPL-2+ (The Battle for Wesnoth music)",
}
# the other Asterisk languages: language -> (folder, apt package, speaker id); no transcripts are used
ASTERISK_LANGUAGES = {
    "es": ("/usr/share/asterisk/sounds/es_MX_f_Allison", "asterisk-core-sounds-es-wav", "asterisk-es"),
    "it": ("/usr/share/asterisk/sounds/it_IT_m_Carlo", "asterisk-core-sounds-it-wav", "asterisk-it"),
    "ru": ("/usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU", "asterisk-core-sounds-ru-wav", "asterisk-ru"),
}
KLETTRES_DIR = "/usr/share/klettres"
ASTERISK_DIRS = ("/usr/share/asterisk/sounds/en_US_f_Allison", "/usr/share/asterisk/sounds/en_US",
                 "/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
WESNOTH_GLOBS = ("/usr/share/games/wesnoth/1.16/data/core/music/*.ogg",
                 "/usr/share/games/wesnoth/*/data/core/music/*.ogg")
WESNOTH_CAPTION = "game soundtrack, orchestral"

_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty").split()
_TENS = {30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}
_NATO = dict(zip("abcdefghijklmnopqrstuvwxyz", (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey x-ray yankee zulu").split(), strict=True))


def _find_asterisk_dir() -> Path:
    for d in ASTERISK_DIRS:
        if Path(d, "digits").is_dir():
            return Path(d)
    raise CodecLMError("Asterisk English prompts not found (looked in "
                       f"{', '.join(ASTERISK_DIRS)}): install them with "
                       "apt-get install asterisk-core-sounds-en-wav")


def _load_transcripts(path: str = ASTERISK_TRANSCRIPTS) -> dict[str, str]:
    """``{'digits/1': 'one', ...}`` from the package's transcript list (empty if absent)."""
    if not os.path.isfile(path):
        return {}
    out = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ": " not in line:
                continue
            key, text = line.split(": ", 1)
            out[key.strip()] = text.strip()
    return out


def _clean(text: str | None) -> str | None:
    """Drop [bracketed] and (parenthesized) notes such as "[beep]" or "(1 second of silence)";
    None when nothing spoken is left."""
    if text is None:
        return None
    text = re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]|\([^)]*\)", "", text)).strip()
    return text if re.search(r"[A-Za-z0-9]", text) else None


def _text_from_name(key: str) -> str | None:
    """Words of the digit, letter and phonetic prompts, read from their file names."""
    folder, _, name = key.rpartition("/")
    if folder == "digits" and name.isdigit():
        n = int(name)
        return _NUMBERS[n] if n < len(_NUMBERS) else _TENS.get(n)
    if folder == "letters" and len(name) == 1 and name.isalpha():
        return name
    if folder == "phonetic" and name.endswith("_p") and name[:-2] in _NATO:
        return _NATO[name[:-2]]
    return None


def asterisk_speech(out_dir: str | os.PathLike | None = None) -> list[AudioRecord]:
    """Records of every Asterisk English prompt (speaker "asterisk", 8 kHz mono).

    With ``out_dir``, also writes ``out_dir/manifest.jsonl`` (paths point into /usr/share).
    Raises :class:`CodecLMError` naming the apt package if it is not installed.
    """
    root = _find_asterisk_dir()
    transcripts = _load_transcripts()
    records = []
    for wav in sorted(root.rglob("*.wav")):
        key = wav.relative_to(root).with_suffix("").as_posix()
        text = _clean(transcripts[key]) if key in transcripts else _text_from_name(key)
        records.append(AudioRecord.from_info(wav, text=text, speaker="asterisk", language="en-us"))
    if not records:
        raise CodecLMError(f"{root}: no WAV prompts found: apt-get install asterisk-core-sounds-en-wav")
    return _maybe_write(records, out_dir)


def asterisk_other_speech(languages=("es", "it", "ru"), out_dir: str | os.PathLike | None = None) -> list[AudioRecord]:
    """Records of the Spanish, Italian and Russian Asterisk prompts (8 kHz mono, no transcripts):
    three more real voices for codec training."""
    records = []
    for lang in languages:
        if lang not in ASTERISK_LANGUAGES:
            raise CodecLMError(f"no Asterisk prompts for language {lang!r} (choose from {', '.join(ASTERISK_LANGUAGES)})")
        folder, package, speaker = ASTERISK_LANGUAGES[lang]
        files = sorted(Path(folder).rglob("*.wav")) if Path(folder).is_dir() else []
        if not files:
            raise CodecLMError(f"{folder}: no Asterisk {lang} prompts: install them with apt-get install {package}")
        for f in files:
            try:
                records.append(AudioRecord.from_info(f, speaker=speaker, language=lang))
            except CodecLMError:  # the packages hold a few empty placeholder files
                continue
    return _maybe_write(records, out_dir)


def klettres_speech(out_dir: str | os.PathLike | None = None) -> list[AudioRecord]:
    """Records of the klettres letters and syllables (real speakers of ~20 languages, 44.1 kHz OGG);
    the speaker is the language folder, the text the file name."""
    files = sorted(Path(KLETTRES_DIR).glob("*/*/*.ogg"))
    if not files:
        raise CodecLMError(f"{KLETTRES_DIR}: no klettres recordings: install them with apt-get install klettres-data")
    records = [AudioRecord.from_info(f, text=f.stem, speaker=f"klettres-{f.parts[-3]}", language=f.parts[-3])
               for f in files]
    return _maybe_write(records, out_dir)


def wesnoth_music(out_dir: str | os.PathLike | None = None) -> list[AudioRecord]:
    """Records of the Wesnoth soundtrack (OGG, 44.1 kHz stereo), captioned "game soundtrack, orchestral".

    With ``out_dir``, also writes ``out_dir/manifest.jsonl``. Raises :class:`CodecLMError`
    naming the apt package if it is not installed.
    """
    files: list[str] = []
    for pattern in WESNOTH_GLOBS:
        files = sorted(glob.glob(pattern))
        if files:
            break
    if not files:
        raise CodecLMError("Wesnoth music not found (/usr/share/games/wesnoth/*/data/core/music): "
                           "install it with apt-get install wesnoth-1.16-music")
    records = [AudioRecord.from_info(f, caption=WESNOTH_CAPTION) for f in files]
    return _maybe_write(records, out_dir)


def _maybe_write(records: list[AudioRecord], out_dir: str | os.PathLike | None) -> list[AudioRecord]:
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_manifest(records, Path(out_dir) / "manifest.jsonl")
    return records


def _held_out(path: str, fraction: float, salt: str) -> bool:
    parts = Path(path).parts
    # folder/name: stable across install locations; klettres repeats folder/name in every language
    key = "/".join(parts[-3:] if "klettres" in parts else parts[-2:])
    h = int.from_bytes(hashlib.sha1(f"{salt}:{key}".encode()).digest()[:8], "big")
    return h / 2.0 ** 64 < fraction


def split_held_out(
    records: Sequence[AudioRecord], fraction: float = 0.1, salt: str = "codeclm"
) -> tuple[list[AudioRecord], list[AudioRecord]]:
    """Split into (train, held_out) by a hash of each file's folder/name: deterministic, and a
    file is on the same side whatever else is in the list. ``fraction`` is the expected share."""
    if not 0.0 <= fraction <= 1.0:
        raise CodecLMError(f"held-out fraction must be in [0, 1], got {fraction}")
    train, held = [], []
    for r in records:
        (held if _held_out(r.path, fraction, salt) else train).append(r)
    return train, held


def write_split_manifests(
    records: Sequence[AudioRecord], out_dir: str | os.PathLike, fraction: float = 0.1
) -> dict[str, Path]:
    """Write ``manifest.jsonl`` (all), ``train.jsonl`` and ``heldout.jsonl`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, held = split_held_out(records, fraction)
    return {name: write_manifest(recs, out_dir / f"{name}.jsonl")
            for name, recs in (("manifest", list(records)), ("train", train), ("heldout", held))}
