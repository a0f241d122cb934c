"""Synthetic music: procedural MIDI (mido) rendered with the ``fluidsynth`` binary, with captions.

Each piece draws a style (pop, rock, electronic, jazz, orchestral, ambient, folk), a key and mode,
a tempo inside the style's range and General MIDI instruments for lead, chords and bass; it plays a
chord progression (one chord per bar), a melody that lands on chord tones on strong beats, a bass
line and, for styles that have them, drums on MIDI channel 10. The caption is made from the same
parameters, e.g. "upbeat electronic track in A minor at 128 bpm with saw lead, warm pad, synth bass
and drums".

Everything is a function of ``seed`` and the piece number; existing files of the right duration
are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from codeclm.audio import audio_info, load_audio, save_audio
from codeclm.data.manifest import AudioRecord, write_manifest
from codeclm.errors import CodecLMError

__all__ = ["synth_music", "find_soundfont", "plan_piece", "piece_to_midi", "Piece", "STYLES"]

SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",       # Debian timgm6mb-soundfont (6 MB)
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",     # Debian fluid-soundfont-gm (140 MB)
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
# General MIDI programs (0-based) and the words the caption uses for them.
GM_NAMES = {0: "piano", 4: "electric piano", 24: "nylon guitar", 25: "acoustic guitar",
            26: "jazz guitar", 29: "overdriven guitar", 30: "distorted guitar", 32: "upright bass",
            33: "electric bass", 34: "picked bass", 38: "synth bass", 40: "violin", 42: "cello",
            48: "strings", 56: "trumpet", 61: "brass", 65: "alto sax", 66: "tenor sax",
            68: "oboe", 71: "clarinet", 73: "flute", 80: "square lead", 81: "saw lead",
            88: "new age pad", 89: "warm pad", 91: "choir pad", 105: "banjo", 11: "vibraphone"}
# style: tempo range, lead / chord / bass program choices, chord rhythm, bass rhythm, drum pattern
STYLES = {
    "pop": dict(tempo=(92, 124), lead=(0, 73, 81), chords=(0, 4, 25), bass=(33, 34),
                comp="quarters", bassline="half", drums="backbeat"),
    "rock": dict(tempo=(100, 150), lead=(29, 30), chords=(29, 30, 25), bass=(34, 33),
                 comp="eighths", bassline="eighths", drums="backbeat"),
    "electronic": dict(tempo=(118, 136), lead=(80, 81), chords=(89, 88), bass=(38,),
                       comp="offbeat", bassline="eighths", drums="four"),
    "jazz": dict(tempo=(90, 150), lead=(65, 66, 56, 11), chords=(0, 4, 26), bass=(32,),
                 comp="offbeat", bassline="walking", drums="swing"),
    "orchestral": dict(tempo=(70, 110), lead=(40, 73, 68, 71), chords=(48,), bass=(42,),
                       comp="whole", bassline="whole", drums=None),
    "ambient": dict(tempo=(60, 84), lead=(11, 73), chords=(89, 88, 91), bass=(38,),
                    comp="whole", bassline="whole", drums=None),
    "folk": dict(tempo=(88, 120), lead=(73, 40, 105), chords=(25, 24), bass=(32,),
                 comp="quarters", bassline="half", drums="backbeat"),
}
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
_PROGRESSIONS = {"major": ((0, 4, 5, 3), (0, 3, 4, 3), (5, 3, 0, 4), (0, 5, 3, 4), (1, 4, 0, 0)),
                 "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2))}
_MOODS = {("major", True): ("upbeat", "cheerful", "bright"), ("major", False): ("calm", "gentle", "warm"),
          ("minor", True): ("driving", "tense", "energetic"), ("minor", False): ("melancholic", "dark", "moody")}
_DRUMS = {  # (beat offset in bar, GM drum note, velocity)
    "backbeat": [(0, 36, 100), (2, 36, 90), (1, 38, 95), (3, 38, 95)] + [(b / 2, 42, 60) for b in range(8)],
    "four": [(b, 36, 105) for b in range(4)] + [(1, 39, 80), (3, 39, 80)] + [(b + .5, 42, 70) for b in range(4)],
    "swing": [(b, 51, 70) for b in range(4)] + [(1 + 2 / 3, 51, 55), (3 + 2 / 3, 51, 55)]
    + [(1, 44, 60), (3, 44, 60), (0, 36, 60)],
}
_TPB = 480  # MIDI ticks per beat


@dataclass
class Piece:
    """Parameters of one generated piece (all drawn from the seed)."""

    style: str
    tonic: int          # 0 = C
    mode: str           # "major" | "minor"
    bpm: int
    lead: int
    chords: int
    bass: int
    mood: str
    progression: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{_NOTE_NAMES[self.tonic]} {self.mode}"

    @property
    def caption(self) -> str:
        parts = [GM_NAMES[self.lead], GM_NAMES[self.chords], GM_NAMES[self.bass]]
        if STYLES[self.style]["drums"]:
            parts.append("drums")
        return (f"{self.mood} {self.style} track in {self.key} at {self.bpm} bpm with "
                f"{', '.join(parts[:-1])} and {parts[-1]}")


def plan_piece(rng: np.random.Generator) -> Piece:
    """Draw a piece's style, key, mode, tempo, instruments and progression."""
    style = str(rng.choice(sorted(STYLES)))
    s = STYLES[style]
    mode = str(rng.choice(("major", "minor")))
    bpm = int(rng.integers(s["tempo"][0], s["tempo"][1] + 1))
    pick = lambda options: int(options[rng.integers(len(options))])  # noqa: E731
    progression = _PROGRESSIONS[mode][rng.integers(len(_PROGRESSIONS[mode]))]
    mood = str(rng.choice(_MOODS[(mode, bpm >= 110)]))
    lead = pick(s["lead"])
    chords = pick([p for p in s["chords"] if p != lead] or s["chords"])
    return Piece(style, int(rng.integers(12)), mode, bpm, lead, chords, pick(s["bass"]), mood,
                 tuple(progression))


def _chord(piece: Piece, degree: int, octave: int) -> list[int]:
    """Triad on scale ``degree`` as MIDI notes with the root in ``octave``."""
    scale = _SCALES[piece.mode]
    base = 12 * (octave + 1) + piece.tonic
    return [base + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]


def _events(piece: Piece, n_bars: int, rng: np.random.Generator) -> list[tuple[float, int, int, int, float]]:
    """Notes as (start beat, channel, note, velocity, length in beats)."""
    s, ev = STYLES[piece.style], []
    scale = _SCALES[piece.mode]
    melody_notes = [12 * 6 + piece.tonic + scale[d % 7] + 12 * (d // 7) - 12 for d in range(-3, 11)]
    pos = int(rng.integers(3, 8))
    for bar in range(n_bars):
        t0, degree = 4.0 * bar, piece.progression[bar % len(piece.progression)]
        chord = _chord(piece, degree, 4)
        comp = {"whole": [(0, 4)], "quarters": [(b, 0.9) for b in range(4)],
                "eighths": [(b / 2, 0.45) for b in range(8)], "offbeat": [(b + .5, 0.4) for b in range(4)]}[s["comp"]]
        for start, length in comp:
            ev += [(t0 + start, 0, n, 62, length) for n in chord]
        low = _chord(piece, degree, 2)
        root = low[0]
        if s["bassline"] == "walking":
            ev += [(t0 + b, 2, n, 85, 0.95) for b, n in enumerate((low[0], low[1], low[2], low[1]))]
        else:
            rhythm = {"whole": [(0, 4)], "half": [(0, 1.9), (2, 1.9)], "eighths": [(b / 2, 0.45) for b in range(8)]}
            ev += [(t0 + st, 2, root, 90, ln) for st, ln in rhythm[s["bassline"]]]
        beat = 0.0
        while beat < 4.0:  # melody: random walk, chord tone on beats 1 and 3
            length = float(rng.choice((0.5, 0.5, 1.0, 1.0, 1.5, 2.0)))
            length = min(length, 4.0 - beat)
            if beat in (0.0, 2.0):
                targets = [i for i, n in enumerate(melody_notes) if n % 12 in {c % 12 for c in chord}]
                pos = min(targets, key=lambda i: abs(i - pos))
            else:
                pos = int(np.clip(pos + rng.integers(-2, 3), 0, len(melody_notes) - 1))
            if rng.random() > 0.12:  # some rests
                ev.append((t0 + beat, 1, melody_notes[pos], int(rng.integers(80, 106)), length * 0.95))
            beat += length
        for start, note, vel in _DRUMS.get(s["drums"], []):
            ev.append((t0 + start, 9, note, vel, 0.25))
    return ev


def piece_to_midi(piece: Piece, duration: float, rng: np.random.Generator, path: str | os.PathLike) -> None:
    """Write a type-1 MIDI file of ``piece`` lasting at least ``duration`` seconds."""
    try:
        import mido
    except ImportError:
        raise CodecLMError("synth_music needs the mido package: pip install mido") from None
    n_bars = max(1, math.ceil(duration * piece.bpm / 60.0 / 4.0))
    mid = mido.MidiFile(type=1, ticks_per_beat=_TPB)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(piece.bpm)),
                           mido.MetaMessage("time_signature", numerator=4, denominator=4)])
    mid.tracks.append(meta)
    msgs: list[tuple[int, int, mido.Message]] = []
    for channel, program in ((0, piece.chords), (1, piece.lead), (2, piece.bass)):
        msgs.append((0, 0, mido.Message("program_change", channel=channel, program=program)))
    for start, ch, note, vel, length in _events(piece, n_bars, rng):
        on, off = int(round(start * _TPB)), int(round((start + length) * _TPB))
        msgs.append((on, 2, mido.Message("note_on", channel=ch, note=note, velocity=vel)))
        msgs.append((off, 1, mido.Message("note_off", channel=ch, note=note, velocity=0)))
    track, now = mido.MidiTrack(), 0
    for tick, _, msg in sorted(msgs, key=lambda m: (m[0], m[1])):  # note_off before note_on
        track.append(msg.copy(time=tick - now))
        now = tick
    mid.tracks.append(track)
    mid.save(str(path))


def find_soundfont(soundfont: str | os.PathLike | None = None) -> Path:
    """The given soundfont, else the first General MIDI one installed (TimGM6mb preferred)."""
    if soundfont is not None:
        if not Path(soundfont).is_file():
            raise CodecLMError(f"{soundfont}: soundfont not found")
        return Path(soundfont)
    for cand in SOUNDFONT_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    raise CodecLMError("no General MIDI soundfont found: install one with "
                       "apt-get install timgm6mb-soundfont (or pass soundfont=...)")


def _render(midi: Path, wav: Path, soundfont: Path, sample_rate: int) -> None:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise CodecLMError("fluidsynth not found on PATH: install it with apt-get install fluidsynth")
    cmd = [exe, "-ni", "-q", "-g", "0.3", "-F", str(wav), "-r", str(sample_rate), str(soundfont), str(midi)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not wav.is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise CodecLMError(f"fluidsynth failed on {midi}: {lines[-1] if lines else 'exit code %d' % proc.returncode}")


def synth_music(
    out_dir: str | os.PathLike,
    n_pieces: int,
    duration: float = 10.0,
    seed: int = 0,
    soundfont: str | os.PathLike | None = None,
    sample_rate: int = 24000,
    progress: bool = True,
) -> list[AudioRecord]:
    """Generate ``n_pieces`` captioned pieces of ``duration`` s into ``out_dir`` (stereo WAV).

    MIDI files go to ``out_dir/midi``, audio to ``out_dir/wavs/s{seed}_{i:06d}.wav`` (cut to
    ``duration`` with a short fade-out), and ``out_dir/manifest.jsonl`` lists them with captions.
    Raises :class:`CodecLMError` if fluidsynth, a soundfont or mido is missing.
    """
    if n_pieces < 0 or duration <= 0:
        raise CodecLMError(f"need n_pieces >= 0 and duration > 0, got {n_pieces}, {duration}")
    sf2 = find_soundfont(soundfont)
    if shutil.which("fluidsynth") is None:
        raise CodecLMError("fluidsynth not found on PATH: install it with apt-get install fluidsynth")
    out_dir = Path(out_dir)
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    (out_dir / "midi").mkdir(parents=True, exist_ok=True)
    n_samples = int(round(duration * sample_rate))
    records = []
    for i in tqdm(range(n_pieces), desc="fluidsynth", unit="piece", disable=not progress):
        rng = np.random.default_rng([seed, i])
        piece = plan_piece(rng)
        name = f"s{seed}_{i:06d}"
        wav_path = out_dir / "wavs" / f"{name}.wav"
        if not (wav_path.is_file() and _has_length(wav_path, n_samples, sample_rate)):
            midi_path = out_dir / "midi" / f"{name}.mid"
            piece_to_midi(piece, duration, rng, midi_path)
            raw = out_dir / "wavs" / f".{name}.render.wav"
            try:
                _render(midi_path, raw, sf2, sample_rate)
                wav, _ = load_audio(raw)
            finally:
                raw.unlink(missing_ok=True)
            save_audio(wav_path, _finish(wav, n_samples, sample_rate), sample_rate)
        records.append(AudioRecord.from_info(wav_path, caption=piece.caption))
    write_manifest(records, out_dir / "manifest.jsonl")
    return records


def _has_length(path: Path, n_samples: int, sample_rate: int) -> bool:
    try:
        info = audio_info(path)
    except CodecLMError:
        return False
    return info.frames == n_samples and info.samplerate == sample_rate


def _finish(wav: torch.Tensor, n_samples: int, sample_rate: int) -> torch.Tensor:
    """Cut or zero-pad to ``n_samples``, fade out the last 0.3 s, scale to -20 dBFS RMS (peak <= 0.95)."""
    wav = wav[:, :n_samples]
    if wav.shape[-1] < n_samples:
        wav = torch.nn.functional.pad(wav, (0, n_samples - wav.shape[-1]))
    fade = min(int(0.3 * sample_rate), n_samples // 4)
    if fade > 0:
        wav = wav.clone()
        wav[:, -fade:] *= torch.linspace(1.0, 0.0, fade)
    peak, rms = float(wav.abs().max()), float(wav.pow(2).mean().sqrt())
    return wav * min(0.1 / rms, 0.95 / peak) if peak > 0 else wav
