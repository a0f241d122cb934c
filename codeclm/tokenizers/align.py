"""Exact phoneme alignments from espeak-ng itself: its library reports every phoneme's position.

    eng = Espeak()                                    # libespeak-ng.so.1 through ctypes, synchronous
    utt = eng.synth("Hello there.", voice="en-us+m3", rate=160, pitch=50)
    utt.audio, utt.sample_rate                        # float32 [N], 22,050 Hz
    utt.tokens, utt.starts, utt.ends                  # phoneme tokens and their sample spans
    frames = utt.frame_alignment(n_frames, 50.0)      # token index of every 20 ms codec frame

espeak-ng is initialised with ``espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA``:
during synthesis the callback receives one ``espeakEVENT_PHONEME`` per phoneme with its IPA name
and its start (``sample``, at the output rate), ``espeakEVENT_WORD`` at each word and
``espeakEVENT_END`` at the end of each clause. The phoneme tokens are the IPA phones of the
project's phoneme vocabulary (:mod:`codeclm.tokenizers.phonemes`, which phonemizes with the same
espeak-ng); an empty phoneme name is a pause and becomes ``,``; :data:`~codeclm.tokenizers.phonemes.WORD_SEP`
(``|``) is inserted between words with zero duration (context for the encoder, no frames); the
silence before the first and after the last phoneme belongs to ``.`` tokens at both ends. So a
token sequence always starts and ends with ``.`` and every sample belongs to exactly one token:
the spans are contiguous, monotonic and cover ``[0, N)``.

Durations at inference (:func:`scaled_durations`): espeak-ng's own durations of the text at its
default voice, scaled to a reference's speaking rate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import threading
from dataclasses import dataclass

import numpy as np

from codeclm.tokenizers.normalize import TextError
from codeclm.tokenizers.phonemes import WORD_SEP

__all__ = ["AlignedUtterance", "Espeak", "PAUSE", "SILENCE", "frame_alignment", "scaled_durations"]

PAUSE, SILENCE = ",", "."
_EV_WORD, _EV_END, _EV_PHONEME, _EV_TERMINATED = 1, 5, 7, 0
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA = 0x0001, 0x0002
_SYNCHRONOUS = 0x02
_POS_CHARACTER = 1
_RATE, _PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class AlignedUtterance:
    """Audio and its phoneme tokens; token ``i`` spans samples ``starts[i] .. ends[i]``."""

    audio: np.ndarray  # float32 [N] in [-1, 1]
    sample_rate: int
    tokens: list[str]
    starts: list[int]
    ends: list[int]

    @property
    def durations(self) -> list[int]:
        """Samples per token (0 for word separators)."""
        return [e - s for s, e in zip(self.starts, self.ends)]

    def frame_alignment(self, n_frames: int, frame_rate: float) -> np.ndarray:
        """Token index of each of ``n_frames`` frames (frame ``f`` is its centre's token)."""
        return frame_alignment(self.starts, self.ends, self.sample_rate, n_frames, frame_rate)


def frame_alignment(starts: list[int], ends: list[int], sample_rate: int, n_frames: int,
                    frame_rate: float) -> np.ndarray:
    """Index of the token whose span holds the centre of each frame ``[n_frames]`` (frames past the
    last span belong to the last token, those before the first to the first). Monotonic."""
    centres = (np.arange(n_frames) + 0.5) / frame_rate * sample_rate
    ends_arr = np.asarray(ends, dtype=np.float64)
    spans = np.asarray(ends, dtype=np.int64) > np.asarray(starts, dtype=np.int64)
    real = np.flatnonzero(spans)  # tokens with samples (word separators have none)
    idx = np.searchsorted(ends_arr[real], centres, side="right")
    return real[np.clip(idx, 0, len(real) - 1)]


def durations_from_alignment(alignment: np.ndarray, n_tokens: int) -> np.ndarray:
    """Frames per token ``[n_tokens]`` of a frame alignment."""
    return np.bincount(np.asarray(alignment, dtype=np.int64), minlength=n_tokens)[:n_tokens]


def _library() -> str:
    found = ctypes.util.find_library("espeak-ng")
    if found:
        return found
    for pattern in ("/usr/lib/*/libespeak-ng.so.1", "/usr/lib/libespeak-ng.so*", "/usr/local/lib/libespeak-ng.so*",
                    "/opt/homebrew/lib/libespeak-ng*.dylib"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    raise TextError("the espeak-ng library (libespeak-ng.so.1) is missing: apt-get install espeak-ng")


class Espeak:
    """One synchronous espeak-ng instance reporting phoneme events (a process-wide singleton:
    the library has global state). ``synth`` is thread-safe (serialised)."""

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __new__(cls) -> Espeak:
        with cls._lock:
            if cls._instance is None:
                self = super().__new__(cls)
                self._init()
                cls._instance = self
            return cls._instance

    def _init(self) -> None:
        self.lib = ctypes.CDLL(_library())
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if rate <= 0:
            raise TextError("espeak-ng failed to initialise (espeak_Initialize returned %d)" % rate)
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        self._callback = _CALLBACK(self._on_synth)  # kept alive: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_synth(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EV_TERMINATED:
            e = events[i]
            if e.type == _EV_PHONEME:
                name = bytes(e.id.string).split(b"\0")[0].decode("utf-8", "replace")
                self._events.append((_EV_PHONEME, int(e.sample), name))
            elif e.type in (_EV_WORD, _EV_END):
                self._events.append((int(e.type), int(e.sample), ""))
            i += 1
        return 0

    def synth(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> AlignedUtterance:
        """Speak ``text`` and return the audio with its phoneme tokens and spans."""
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text to speak is empty")
        with self._lock:
            if voice != self._voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise TextError(f"espeak-ng has no voice {voice!r}")
                self._voice = voice
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            chunks, events = self._chunks, self._events
        audio = (np.concatenate(chunks).astype(np.float32) / 32768.0) if chunks else np.zeros(0, np.float32)
        return _assemble(audio, self.sample_rate, events, text)


def _assemble(audio: np.ndarray, sample_rate: int, events: list[tuple[int, int, str]], text: str) -> AlignedUtterance:
    """Tokens and contiguous spans from the event list (see the module docstring)."""
    N = len(audio)
    tokens, starts = [], []
    word_pending = False
    for kind, sample, name in events:
        sample = min(max(sample, 0), N)
        if kind == _EV_WORD:
            word_pending = bool(tokens)
        elif kind == _EV_PHONEME:
            tok = name if name.strip() else PAUSE
            if tok == PAUSE and (not tokens or tokens[-1] == PAUSE):
                if tokens:
                    continue  # repeated pause: one token
            if word_pending and tok != PAUSE and tokens and tokens[-1] not in (PAUSE, WORD_SEP):
                tokens.append(WORD_SEP)
                starts.append(sample)
            word_pending = False if tok != PAUSE else word_pending
            tokens.append(tok.replace(" ", ""))
            starts.append(sample)
    phones = [t for t in tokens if t not in (PAUSE, WORD_SEP)]
    if not phones:
        raise TextError(f"espeak-ng gave no phonemes for {text[:40]!r}")
    # leading pauses / silence become the opening "."; trailing pauses the closing "."
    while tokens and tokens[0] in (PAUSE, WORD_SEP):
        tokens.pop(0)
        starts.pop(0)
    last_end = N
    while tokens and tokens[-1] in (PAUSE, WORD_SEP):
        last_end = starts[-1] if tokens[-1] == PAUSE else last_end
        tokens.pop()
        starts.pop()
    if last_end == N:  # no trailing pause event: the end of the last clause
        ends_ev = [min(max(s, 0), N) for k, s, _ in events if k == _EV_END]
        last_end = max(ends_ev) if ends_ev else N
    last_end = max(last_end, starts[-1] + 1) if starts else last_end
    # spans: each token until the next token with samples; word separators have none
    ends = []
    for i in range(len(tokens)):
        nxt = last_end
        for j in range(i + 1, len(tokens)):
            if tokens[j] != WORD_SEP:
                nxt = starts[j]
                break
        ends.append(nxt)
    for i, t in enumerate(tokens):
        if t == WORD_SEP:
            ends[i] = starts[i]
    first = starts[0]
    tokens = [SILENCE] + tokens + [SILENCE]
    starts = [0] + starts + [min(last_end, N)]
    ends = [first] + ends + [N]
    # make the spans exactly contiguous and monotonic (events are at sample precision already)
    pos = 0
    for i in range(len(tokens)):
        s = max(starts[i], pos)
        e = max(ends[i], s) if tokens[i] != WORD_SEP else s
        starts[i], ends[i] = s, e
        pos = e
    ends[-1] = max(ends[-1], N)
    return AlignedUtterance(audio, sample_rate, tokens, starts, ends)


def scaled_durations(durations: np.ndarray, tokens: list[str], factor: float, min_frames: int = 1) -> np.ndarray:
    """Frame durations ``durations`` (frames per token) scaled by ``factor`` with cumulative rounding
    (the total is ``round(sum * factor)``); every token with frames keeps at least ``min_frames``,
    word separators stay at 0."""
    d = np.asarray(durations, dtype=np.float64) * float(factor)
    cum = np.round(np.cumsum(d)).astype(np.int64)
    out = np.diff(np.concatenate([[0], cum]))
    for i, t in enumerate(tokens):
        if t != WORD_SEP and durations[i] > 0 and out[i] < min_frames:
            out[i] = min_frames
        if t == WORD_SEP:
            out[i] = 0
    return out
