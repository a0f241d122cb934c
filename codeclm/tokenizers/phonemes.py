"""Phonemes for VALL-E (X)-style voice cloning: espeak-ng via ``phonemizer``, and a phoneme vocabulary.

    p = Phonemizer("en")
    p.phonemize(["Hello, world!"])          # ['h ə l ˈ oʊ , | w ˈ ɜː l d !']
    vocab = PhonemeVocab.build(p.phonemize(corpus))
    ids = vocab.encode(p("Hello"), "en")     # [id(<lang:en>), id(h), id(ə), ...]
    vocab.decode(ids)                        # 'h ə l ˈ oʊ'
    vocab.save(model_dir)                    # model_dir/phoneme_vocab.json (saved with the model)

    t2p = TextToPhonemes(("en", "de"), vocab)   # normalise -> phonemise -> ids, one call
    t2p.encode("Dr. Smith paid $5.", "en")

A phoneme string is a space-separated token list: phones (``oʊ``, ``ɜː``), stress marks (``ˈ``,
``ˌ``) and punctuation (``, . ! ? — …`` ...) are tokens of their own, and :data:`WORD_SEP` (``|``)
separates words. The vocabulary holds the special tokens ``<pad> <bos> <eos> <unk> |`` (ids 0-4),
one ``<lang:xx>`` token per supported language (the language id of VALL-E X), the stress and
punctuation marks, then the phones seen in the corpus in sorted (deterministic) order. Unknown phones encode to
``<unk>``.

Needs the pip package ``phonemizer`` and the espeak-ng shared library (Debian/Ubuntu:
``apt install espeak-ng``; macOS: ``brew install espeak-ng``). If phonemizer cannot find the library
and ``PHONEMIZER_ESPEAK_LIBRARY`` is unset, the usual install locations are searched.
Every failure is a one-line :class:`TextError`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from codeclm.errors import ConfigError
from codeclm.tokenizers.normalize import (
    SUPPORTED_LANGUAGES,
    TextError,
    check_language,
    normalize_text,
)

__all__ = [
    "ESPEAK_VOICES", "PUNCTUATION", "SPECIAL_TOKENS", "VOCAB_NAME", "WORD_SEP", "PhonemeVocab", "Phonemizer",
    "TextToPhonemes", "espeak_available", "split_phonemes",
]

ESPEAK_VOICES = {"en": "en-us", "de": "de", "fr": "fr-fr", "es": "es"}  # language code -> espeak voice
assert set(ESPEAK_VOICES) == set(SUPPORTED_LANGUAGES)
WORD_SEP = "|"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, WORD_SEP)
PUNCTUATION = tuple(';:,.!?¡¿—…"«»“”(){}[]')  # phonemizer's preserved marks, one token each
STRESS = ("ˈ", "ˌ")
VOCAB_NAME = "phoneme_vocab.json"
_FORMAT, _VERSION = "codeclm-phoneme-vocab", 1
_TOKEN_RE = re.compile("[" + re.escape("".join(STRESS + PUNCTUATION)) + "]|[^\\s" +
                       re.escape("".join(STRESS + PUNCTUATION)) + "]+")
_LIB_GLOBS = ("/usr/lib/*/libespeak-ng.so*", "/usr/lib/libespeak-ng.so*", "/usr/lib64/libespeak-ng.so*",
              "/usr/local/lib/libespeak-ng.so*", "/opt/homebrew/lib/libespeak-ng*.dylib",
              "/usr/local/lib/libespeak-ng*.dylib")


def lang_token(language: str) -> str:
    return f"<lang:{language}>"


def _espeak_backend_class():
    """phonemizer's EspeakBackend, pointed at libespeak-ng if it does not find it by itself."""
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError as e:
        raise TextError("phonemes need the 'phonemizer' package: pip install phonemizer") from e
    if not EspeakBackend.is_available() and not os.environ.get("PHONEMIZER_ESPEAK_LIBRARY"):
        for pattern in _LIB_GLOBS:
            found = sorted(glob.glob(pattern))
            if found:
                EspeakBackend.set_library(found[0])
                break
    if not EspeakBackend.is_available():
        raise TextError("espeak-ng library not found: install espeak-ng (apt install espeak-ng) "
                        "or set PHONEMIZER_ESPEAK_LIBRARY to libespeak-ng's path")
    return EspeakBackend


def espeak_available() -> bool:
    """True when phonemizer and the espeak-ng library can be used."""
    try:
        _espeak_backend_class()
    except TextError:
        return False
    return True


_BACKENDS: dict[tuple, object] = {}
_BACKENDS_LOCK = threading.Lock()
_QUIET = logging.getLogger("codeclm.phonemizer")
_QUIET.setLevel(logging.ERROR)


def _backend(voice: str, with_stress: bool, preserve_punctuation: bool):
    """One cached EspeakBackend per configuration (creating one is slow)."""
    key = (voice, with_stress, preserve_punctuation)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            cls = _espeak_backend_class()
            _BACKENDS[key] = cls(voice, with_stress=with_stress, preserve_punctuation=preserve_punctuation,
                                 language_switch="remove-flags", logger=_QUIET)
        return _BACKENDS[key]


def split_phonemes(phonemes: str | Sequence[str]) -> list[str]:
    """Tokens of a phoneme string (already a token list is returned as a list)."""
    if isinstance(phonemes, str):
        return _TOKEN_RE.findall(phonemes)
    if not all(isinstance(t, str) for t in phonemes):
        raise TextError("phonemes must be a string or a sequence of string tokens")
    return list(phonemes)


class Phonemizer:
    """Text -> phoneme string with espeak-ng (``phonemizer``), stress marks and punctuation kept.

    ``Phonemizer("de").phonemize(["Guten Tag!"])`` -> ``['ɡ ˈ uː t ə n | t ˈ ɑː k !']``. The text
    should already be normalised (:func:`normalize_text`); digits are left to espeak otherwise.
    """

    def __init__(self, language: str = "en", with_stress: bool = True, preserve_punctuation: bool = True):
        self.language = check_language(language)
        self.voice = ESPEAK_VOICES[self.language]
        self.with_stress = with_stress
        self.preserve_punctuation = preserve_punctuation
        self._backend = _backend(self.voice, with_stress, preserve_punctuation)

    def phonemize(self, texts: Sequence[str] | str) -> list[str]:
        """One phoneme string per text (a bare string is one text); TextError for empty text or
        text that gives no phonemes."""
        from phonemizer.separator import Separator

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TextError(f"text {i} must be a string, got {type(t).__name__}")
            if not t.strip():
                raise TextError(f"text {i} is empty (nothing to phonemize)")
        if not texts:
            return []
        raw = self._backend.phonemize(texts, separator=Separator(phone=" ", word=f" {WORD_SEP} ", syllable=""),
                                      strip=True, njobs=1)
        out = []
        for i, (t, r) in enumerate(zip(texts, raw)):
            tokens = split_phonemes(r)
            while tokens and tokens[0] == WORD_SEP:
                tokens.pop(0)
            while tokens and tokens[-1] == WORD_SEP:
                tokens.pop()
            if not any(tok not in PUNCTUATION and tok != WORD_SEP for tok in tokens):
                raise TextError(f"text {i} ({t[:40]!r}) gives no phonemes in language {self.language!r}")
            out.append(" ".join(tokens))
        return out

    def __call__(self, text: str) -> str:
        return self.phonemize([text])[0]

    def __repr__(self) -> str:
        return f"Phonemizer({self.language!r}, voice={self.voice!r}, with_stress={self.with_stress})"


class PhonemeVocab:
    """Phoneme token <-> id table with special and language tokens; saved as JSON with the model."""

    def __init__(self, phonemes: Iterable[str] = (), languages: Sequence[str] = SUPPORTED_LANGUAGES):
        langs = sorted({check_language(lang) for lang in languages})
        if not langs:
            raise TextError("a phoneme vocabulary needs at least one language")
        head = list(SPECIAL_TOKENS) + [lang_token(lang) for lang in langs] + list(STRESS) + list(PUNCTUATION)
        seen = set(head)
        extra = sorted({p for p in phonemes if p not in seen})
        for p in extra:
            if not p or any(c.isspace() for c in p) or p.startswith("<lang:"):
                raise TextError(f"invalid phoneme token {p!r}")
        self.languages: tuple[str, ...] = tuple(langs)
        self.tokens: list[str] = head + extra
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, phoneme_strings: Iterable[str | Sequence[str]], languages: Sequence[str] = SUPPORTED_LANGUAGES,
              min_count: int = 1) -> PhonemeVocab:
        """Vocabulary of every token seen at least ``min_count`` times in ``phoneme_strings``."""
        counts = Counter(tok for s in phoneme_strings for tok in split_phonemes(s))
        return cls([t for t, c in counts.items() if c >= min_count], languages)

    pad_id, bos_id, eos_id, unk_id, word_sep_id = range(5)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhonemeVocab) and (self.tokens, self.languages) == (other.tokens, other.languages)

    def lang_id(self, language: str) -> int:
        code = check_language(language)
        if code not in self.languages:
            raise TextError(f"language {code!r} is not in this phoneme vocabulary ({', '.join(self.languages)})")
        return self.index[lang_token(code)]

    def encode(self, phonemes: str | Sequence[str], language: str, bos: bool = False, eos: bool = False) -> list[int]:
        """``[<bos>?] <lang:xx> phoneme ids... [<eos>?]``; unknown phonemes become ``<unk>``."""
        ids = [self.lang_id(language)]
        ids += [self.index.get(t, self.unk_id) for t in split_phonemes(phonemes)]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def id_to_token(self, i: int) -> str:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self.tokens):
            raise TextError(f"phoneme id {i!r} is out of range [0, {len(self.tokens)})")
        return self.tokens[i]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Phoneme string of ``ids``; ``<pad> <bos> <eos>`` and language tokens are dropped unless
        ``skip_special=False`` (``<unk>`` and ``|`` are always kept)."""
        drop = {self.pad_id, self.bos_id, self.eos_id} | {self.index[lang_token(x)] for x in self.languages}
        ids = [int(i) for i in ids]
        toks = [self.id_to_token(i) for i in ids]
        return " ".join(t for i, t in zip(ids, toks) if not (skip_special and i in drop))

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "languages": list(self.languages), "tokens": self.tokens}

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON to ``path`` (a folder gets ``phoneme_vocab.json`` inside); returns the file."""
        p = Path(path)
        if p.is_dir():
            p = p / VOCAB_NAME
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> PhonemeVocab:
        """Read a vocabulary written by :meth:`save` (a file, or a folder holding ``phoneme_vocab.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / VOCAB_NAME
        if not p.is_file():
            raise ConfigError(f"{p}: phoneme vocabulary not found")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: unreadable phoneme vocabulary ({e})") from e
        if not isinstance(d, dict) or d.get("format") != _FORMAT or d.get("version") != _VERSION:
            raise ConfigError(f"{p}: not a {_FORMAT} v{_VERSION} file")
        vocab = cls(d["tokens"], d["languages"])
        if vocab.tokens != d["tokens"]:
            raise ConfigError(f"{p}: phoneme vocabulary tokens are not in canonical order (edited by hand?)")
        return vocab

    def __repr__(self) -> str:
        return f"PhonemeVocab(size={len(self)}, languages={self.languages})"


class TextToPhonemes:
    """Normalise -> phonemise -> ids for a fixed set of languages (VALL-E X text front end).

    ``vocab`` may be given later via :meth:`build_vocab`; :meth:`phonemes` works without one.
    """

    def __init__(self, languages: Sequence[str] = ("en", "de"), vocab: PhonemeVocab | None = None):
        self.languages = tuple(dict.fromkeys(check_language(lang) for lang in languages))
        if not self.languages:
            raise TextError("TextToPhonemes needs at least one language")
        if vocab is not None:
            missing = [lang for lang in self.languages if lang not in vocab.languages]
            if missing:
                raise TextError(f"phoneme vocabulary has no token for language(s) {', '.join(missing)}")
        self.vocab = vocab
        self._phonemizers: dict[str, Phonemizer] = {}

    def _lang(self, language: str) -> str:
        code = check_language(language)
        if code not in self.languages:
            raise TextError(f"language {language!r} is not enabled here; enabled: {', '.join(self.languages)}")
        return code

    def phonemizer(self, language: str) -> Phonemizer:
        code = self._lang(language)
        if code not in self._phonemizers:
            self._phonemizers[code] = Phonemizer(code)
        return self._phonemizers[code]

    def phonemes(self, texts: Sequence[str] | str, language: str) -> list[str]:
        """Phoneme strings of the normalised texts (a bare string is one text)."""
        code = self._lang(language)
        if isinstance(texts, str):
            texts = [texts]
        return self.phonemizer(code).phonemize([normalize_text(t, code) for t in texts])

    def build_vocab(self, pairs: Iterable[tuple[str, str]], min_count: int = 1) -> PhonemeVocab:
        """Build (and keep) a vocabulary from ``(text, language)`` pairs; deterministic."""
        by_lang: dict[str, list[str]] = {}
        for text, language in pairs:
            by_lang.setdefault(self._lang(language), []).append(text)
        strings = [s for lang in sorted(by_lang) for s in self.phonemes(by_lang[lang], lang)]
        self.vocab = PhonemeVocab.build(strings, self.languages, min_count=min_count)
        return self.vocab

    def encode(self, text: str, language: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of one text: ``[<bos>?] <lang:xx> phonemes... [<eos>?]``."""
        if self.vocab is None:
            raise TextError("TextToPhonemes has no phoneme vocabulary: pass vocab= or call build_vocab()")
        return self.vocab.encode(self.phonemes(text, language)[0], language, bos=bos, eos=eos)

    __call__ = encode

    def encode_batch(self, texts: Sequence[str], language: str, bos: bool = False, eos: bool = False) -> list[list[int]]:
        if self.vocab is None:
            raise TextError("TextToPhonemes has no phoneme vocabulary: pass vocab= or call build_vocab()")
        return [self.vocab.encode(p, language, bos=bos, eos=eos) for p in self.phonemes(texts, language)]

    def __repr__(self) -> str:
        return f"TextToPhonemes(languages={self.languages}, vocab={self.vocab!r})"
