"""Synthetic speech (espeak-ng), synthetic music (fluidsynth), packaged recordings, the data CLI."""

import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from codeclm.data import real, synth_music as sm, synth_speech as ss
from codeclm.cli import main
from codeclm.data.manifest import read_manifest
from codeclm.errors import CodecLMError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")
try:
    sm.find_soundfont()
    _HAVE_SF2 = shutil.which("fluidsynth") is not None
except CodecLMError:
    _HAVE_SF2 = False
try:
    import mido
except ImportError:
    mido = None
needs_mido = pytest.mark.skipif(mido is None, reason="pip install mido")
needs_fluidsynth = pytest.mark.skipif(not (_HAVE_SF2 and mido), reason="apt-get install fluidsynth timgm6mb-soundfont")


def _cli(*argv):
    return main(list(argv))


def test_sentences_are_deterministic_and_fresh_per_slot():
    a = [ss.make_sentence("en-us", np.random.default_rng([0, i])) for i in range(20)]
    assert a == [ss.make_sentence("en-us", np.random.default_rng([0, i])) for i in range(20)]
    assert len(set(a)) >= 18 and all(s[0].isupper() and s[-1] in ".?" for s in a)
    assert not any(re.search(r"\b[Aa] [aeiou]", s) for s in a)
    assert ss.make_sentence("de", np.random.default_rng(1)).endswith(".")
    with pytest.raises(CodecLMError, match="not supported"):
        ss.speakers_for(["tlh"])


@needs_espeak
def test_silently_ignored_variants_are_not_speakers():
    gb = ss._distinct_variants("en-gb")
    assert "+m3" not in gb and "+f4" not in gb  # espeak-ng renders them like plain en-gb
    assert len(ss._distinct_variants("en-us")) >= 12
    ids = [s.id for s in ss.speakers_for(["en-us", "en-gb"])]
    assert len(ids) == len(set(ids)) > 50 and "en-us+f2@p50" in ids


@needs_espeak
def test_synth_speech_three_utterances_resumable(tmp_path):
    recs = ss.synth_speech(tmp_path / "a", 3, languages=("en-us", "en-gb"), seed=7, progress=False)
    assert [r.language for r in recs] == ["en-us", "en-gb", "en-us"]
    assert read_manifest(tmp_path / "a" / "manifest.jsonl") == recs
    for r in recs:
        x, sr = sf.read(r.path)
        assert sr == 22050 and r.sample_rate == 22050 and r.channels == 1
        assert 0.5 < r.duration < 10 and np.sqrt(np.mean(x ** 2)) > 0.01  # real speech, not silence
        assert r.text and re.fullmatch(r"[\w-]+(\+\w+)?@p\d+", r.speaker)
    # resumable: existing files are kept; a deleted one comes back identical
    first = tmp_path / "a" / "wavs" / "s7_000000.wav"
    before, mtime = first.read_bytes(), os.stat(recs[1].path).st_mtime_ns
    first.unlink()
    again = ss.synth_speech(tmp_path / "a", 3, languages=("en-us", "en-gb"), seed=7, progress=False)
    assert again == recs and first.read_bytes() == before
    assert os.stat(recs[1].path).st_mtime_ns == mtime


def test_synth_speech_without_espeak_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(ss.shutil, "which", lambda name: None)
    with pytest.raises(CodecLMError, match="apt-get install espeak-ng"):
        ss.synth_speech(tmp_path, 1, progress=False)


@needs_mido
def test_piece_plan_and_midi(tmp_path):
    piece = sm.plan_piece(np.random.default_rng([0, 3]))
    assert piece == sm.plan_piece(np.random.default_rng([0, 3]))
    assert re.fullmatch(r"\w+ \w+ track in [A-G][#b]? (major|minor) at \d+ bpm with .+ and \w+( \w+)?",
                        piece.caption)
    lo, hi = sm.STYLES[piece.style]["tempo"]
    assert lo <= piece.bpm <= hi and f" {piece.style} " in piece.caption
    drums = sm.Piece("electronic", 9, "minor", 128, 81, 89, 38, "driving", (0, 5, 2, 6))
    assert drums.caption == ("driving electronic track in A minor at 128 bpm with saw lead, warm pad, "
                             "synth bass and drums")
    sm.piece_to_midi(drums, 4.0, np.random.default_rng(0), tmp_path / "p.mid")
    mid = mido.MidiFile(str(tmp_path / "p.mid"))
    assert mid.length >= 4.0
    notes = [m for m in mid.tracks[1] if m.type == "note_on"]
    assert {m.channel for m in notes} == {0, 1, 2, 9}  # chords, melody, bass, drums on channel 10
    a_minor = {9, 11, 0, 2, 4, 5, 7}
    assert all(m.note % 12 in a_minor for m in notes if m.channel != 9)


@needs_fluidsynth
def test_synth_music_one_piece(tmp_path):
    (rec,) = sm.synth_music(tmp_path, 1, duration=2.0, seed=1, progress=False)
    x, sr = sf.read(rec.path)
    assert sr == 24000 and x.shape == (48000, 2) and rec.duration == 2.0 and rec.channels == 2
    assert np.sqrt(np.mean(x ** 2)) == pytest.approx(0.1, rel=0.05) and np.abs(x).max() <= 0.95 + 1e-3
    assert rec.caption == sm.plan_piece(np.random.default_rng([1, 0])).caption
    assert (tmp_path / "midi" / "s1_000000.mid").is_file()
    assert read_manifest(tmp_path / "manifest.jsonl") == [rec]
    mtime = os.stat(rec.path).st_mtime_ns
    assert sm.synth_music(tmp_path, 1, duration=2.0, seed=1, progress=False) == [rec]
    assert os.stat(rec.path).st_mtime_ns == mtime  # resumed, not re-rendered


def test_synth_music_missing_tools_are_clear(tmp_path, monkeypatch):
    with pytest.raises(CodecLMError, match="soundfont not found"):
        sm.synth_music(tmp_path, 1, soundfont=tmp_path / "none.sf2", progress=False)
    monkeypatch.setattr(sm, "SOUNDFONT_CANDIDATES", ())
    with pytest.raises(CodecLMError, match="apt-get install timgm6mb-soundfont"):
        sm.synth_music(tmp_path, 1, progress=False)
    (tmp_path / "x.sf2").write_bytes(b"")
    monkeypatch.setattr(sm.shutil, "which", lambda name: None)
    with pytest.raises(CodecLMError, match="apt-get install fluidsynth"):
        sm.synth_music(tmp_path, 1, soundfont=tmp_path / "x.sf2", progress=False)


def test_missing_packages_name_apt_package(monkeypatch):
    monkeypatch.setattr(real, "ASTERISK_DIRS", ("/nonexistent/asterisk",))
    with pytest.raises(CodecLMError, match="apt-get install asterisk-core-sounds-en-wav"):
        real.asterisk_speech()
    monkeypatch.setattr(real, "WESNOTH_GLOBS", ("/nonexistent/*.ogg",))
    with pytest.raises(CodecLMError, match="apt-get install wesnoth-1.16-music"):
        real.wesnoth_music()
    assert "CC-BY-SA-3.0" in real.LICENSES["asterisk-core-sounds-en-wav"]
    assert "GPL-2+" in real.LICENSES["wesnoth-1.16-music"]


@needs_espeak
def test_cli_synth_speech_then_scan(tmp_path, capsys):
    assert _cli("data", "synth-speech", str(tmp_path / "sp"), "-n", "2", "--seed", "1",
                "--languages", "en-us") == 0
    assert "2 utterances" in capsys.readouterr().out
    (tmp_path / "sp" / "wavs" / "junk.wav").write_bytes(b"junk")
    assert _cli("data", "scan", str(tmp_path / "sp"), "-o", str(tmp_path / "m.jsonl")) == 1
    assert "junk.wav" in capsys.readouterr().err
    assert _cli("data", "scan", str(tmp_path / "sp"), "-o", str(tmp_path / "m.jsonl"), "--skip-errors") == 0
    assert len(read_manifest(tmp_path / "m.jsonl")) == 2


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/asterisk/sounds/en_US_f_Allison"),
                    reason="apt-get install asterisk-core-sounds-en-wav")
def test_asterisk_prompts(tmp_path):
    recs = real.asterisk_speech(tmp_path)
    assert len(recs) == 568 and {r.sample_rate for r in recs} == {8000} and {r.speaker for r in recs} == {"asterisk"}
    by_name = {"/".join(r.path.split("/")[-2:]): r.text for r in recs}
    assert by_name["digits/7.wav"] == "seven" and by_name["en_US_f_Allison/beep.wav"] is None
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 568
    assert _cli("data", "real-speech", str(tmp_path / "cli")) == 0
    train, held = (read_manifest(tmp_path / "cli" / f"{n}.jsonl") for n in ("train", "heldout"))
    assert len(train) + len(held) == 568 and 20 < len(held) < 100


@pytest.mark.slow
@pytest.mark.skipif(not any(__import__("glob").glob(real.WESNOTH_GLOBS[1])),
                    reason="apt-get install wesnoth-1.16-music")
def test_wesnoth_music():
    recs = real.wesnoth_music()
    assert len(recs) == 41 and {r.sample_rate for r in recs} == {44100}
    assert {r.caption for r in recs} == {"game soundtrack, orchestral"}
    assert 120 < sum(r.duration for r in recs) / 60 < 135
