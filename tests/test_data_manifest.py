"""Manifests, folder scans, corpus readers and the held-out split."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from codeclm.data.manifest import AudioRecord, read_manifest, scan_folder, write_manifest
from codeclm.data.readers import read_libritts, read_ljspeech, read_vctk
from codeclm.data.real import _clean, _text_from_name, split_held_out
from codeclm.errors import AudioError, CodecLMError


def _tone(path, seconds=0.25, sr=16000, channels=1, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * math.pi * freq * t)
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, sr)
    return path


def test_manifest_round_trip_relative_and_absolute(tmp_path):
    _tone(tmp_path / "data" / "a.wav")
    outside = _tone(tmp_path / "elsewhere" / "b.wav", sr=8000, channels=2)
    recs = [AudioRecord(str(tmp_path / "data" / "a.wav"), 0.25, 16000, 1, text="héllo", speaker="s1"),
            AudioRecord(str(outside), 0.25, 8000, 2, caption="a tone", language="en-us")]
    path = write_manifest(recs, tmp_path / "data" / "manifest.jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["path"] == "a.wav"  # below the manifest: written relative
    assert lines[1]["path"] == str(outside)  # outside: kept absolute
    assert "caption" not in lines[0] and lines[0]["text"] == "héllo"
    back = read_manifest(path)
    assert back == recs
    assert not list((tmp_path / "data").glob("*.tmp"))  # atomic write leaves no temp file


def test_read_manifest_resolves_relative_to_manifest_folder(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "x/y.wav", "duration": 1, "sample_rate": 8000, "channels": 1}\n\n')
    (rec,) = read_manifest(tmp_path / "m.jsonl")
    assert rec.path == str(tmp_path / "x" / "y.wav") and rec.duration == 1.0 and rec.text is None


@pytest.mark.parametrize("line,needle", [
    ('{"path": "a.wav", "duration": 1', "malformed JSON"),
    ('{"path": "a.wav", "sample_rate": 8000, "channels": 1}', "missing field(s) duration"),
    ('[1, 2]', "expected a JSON object"),
    ('{"path": "a.wav", "duration": "long", "sample_rate": 8000, "channels": 1}', "bad field value"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, needle):
    good = '{"path": "a.wav", "duration": 1, "sample_rate": 8000, "channels": 1}'
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n")
    with pytest.raises(CodecLMError) as err:
        read_manifest(path)
    assert f"bad.jsonl:3: {needle}" in str(err.value)


def test_missing_manifest_is_clear(tmp_path):
    with pytest.raises(CodecLMError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def _scan_tree(tmp_path):
    _tone(tmp_path / "b" / "one.wav", seconds=0.5, sr=16000)
    (tmp_path / "b" / "one.txt").write_text("hello one\n")
    (tmp_path / "b" / "one.caption.txt").write_text("a sine tone")
    _tone(tmp_path / "a" / "two.flac", seconds=0.25, sr=8000, channels=2)
    (tmp_path / "a" / "bad.wav").write_bytes(b"RIFF....not really a wav")
    (tmp_path / "notes.md").write_text("ignored")
    _tone(tmp_path / ".hidden" / "tmp.wav")


def test_scan_folder_reads_headers_and_sidecars_and_skips_corrupt(tmp_path):
    _scan_tree(tmp_path)
    result = scan_folder(tmp_path, skip_errors=True)
    assert [r.path for r in result.records] == [str(tmp_path / "a" / "two.flac"), str(tmp_path / "b" / "one.wav")]
    two, one = result.records
    assert (two.sample_rate, two.channels, two.duration) == (8000, 2, 0.25)
    assert (one.text, one.caption, one.duration) == ("hello one", "a sine tone", 0.5)
    assert result.n_errors == 1 and result.errors[0][0].endswith("bad.wav")
    assert "1 unreadable (bad.wav)" in result.summary()
    assert len(result) == 2 and list(result) == result.records and result[1] is one


def test_scan_folder_raises_on_corrupt_without_skip(tmp_path):
    _scan_tree(tmp_path)
    with pytest.raises(AudioError, match=r"1 unreadable \(bad.wav\).*skip_errors"):
        scan_folder(tmp_path)


def test_scan_without_sidecar(tmp_path):
    _tone(tmp_path / "x.wav")
    (tmp_path / "x.txt").write_text("words")
    assert scan_folder(tmp_path, sidecar=False).records[0].text is None


def test_read_ljspeech(tmp_path):
    _tone(tmp_path / "wavs" / "LJ001-0001.wav", seconds=0.3, sr=22050)
    _tone(tmp_path / "wavs" / "LJ001-0002.wav", seconds=0.2, sr=22050)
    (tmp_path / "metadata.csv").write_text(
        'LJ001-0001|Printing, in 1 "sense"|Printing, in one "sense"\nLJ001-0002|Only raw text|\n')
    recs = read_ljspeech(tmp_path)
    assert [r.text for r in recs] == ['Printing, in one "sense"', "Only raw text"]
    assert recs[0].speaker == "LJ" and recs[0].sample_rate == 22050 and abs(recs[1].duration - 0.2) < 1e-6


def test_read_ljspeech_missing_wav(tmp_path):
    _tone(tmp_path / "wavs" / "A.wav")
    (tmp_path / "metadata.csv").write_text("A|a|a\nB|b|b\n")
    with pytest.raises(AudioError, match="B.wav: no such file"):
        read_ljspeech(tmp_path)
    assert [r.text for r in read_ljspeech(tmp_path, skip_errors=True)] == ["a"]


def test_read_libritts(tmp_path):
    chapter = tmp_path / "train-clean-100" / "19" / "198"
    _tone(chapter / "19_198_000000_000000.wav", sr=24000)
    (chapter / "19_198_000000_000000.normalized.txt").write_text("Normalized text.")
    (chapter / "19_198_000000_000000.original.txt").write_text("Original text.")
    _tone(chapter / "19_198_000000_000001.wav", sr=24000)
    (chapter / "19_198_000000_000001.original.txt").write_text("Only original.")
    _tone(tmp_path / "train-clean-100" / "26" / "495" / "26_495_000004_000000.wav", sr=24000)
    recs = read_libritts(tmp_path)
    assert [(r.speaker, r.text) for r in recs] == [
        ("19", "Normalized text."), ("19", "Only original."), ("26", None)]


def test_read_vctk_092_and_080(tmp_path):
    new = tmp_path / "new"
    _tone(new / "wav48_silence_trimmed" / "p225" / "p225_001_mic1.flac", sr=48000)
    _tone(new / "wav48_silence_trimmed" / "p225" / "p225_001_mic2.flac", sr=48000)
    _tone(new / "wav48_silence_trimmed" / "p226" / "p226_002_mic1.flac", sr=48000)
    (new / "txt" / "p225").mkdir(parents=True)
    (new / "txt" / "p225" / "p225_001.txt").write_text("Please call Stella.\n")
    recs = read_vctk(new)
    assert [(r.speaker, r.text, r.sample_rate) for r in recs] == [
        ("p225", "Please call Stella.", 48000), ("p226", None, 48000)]
    assert [r.speaker for r in read_vctk(new, mic=2)] == ["p225"]
    old = tmp_path / "old"
    _tone(old / "wav48" / "p300" / "p300_010.wav", sr=48000)
    (old / "txt" / "p300").mkdir(parents=True)
    (old / "txt" / "p300" / "p300_010.txt").write_text("Ask her.")
    assert [(r.speaker, r.text) for r in read_vctk(old)] == [("p300", "Ask her.")]
    with pytest.raises(CodecLMError, match="not a VCTK folder"):
        read_vctk(tmp_path)


def test_split_held_out_is_deterministic_and_by_name():
    recs = [AudioRecord(f"/data/speaker{i % 7}/utt{i}.wav", 1.0, 8000, 1) for i in range(400)]
    train, held = split_held_out(recs, 0.25)
    assert len(train) + len(held) == 400 and 70 < len(held) < 130
    assert not {r.path for r in train} & {r.path for r in held}
    # same file -> same side, whatever the list, the order or the install prefix
    moved = [AudioRecord(r.path.replace("/data/", "/mnt/other/"), 1.0, 8000, 1) for r in reversed(recs[:50])]
    _, held2 = split_held_out(moved, 0.25)
    assert sorted(r.path.split("/")[-1] for r in held2) == sorted(
        r.path.split("/")[-1] for r in held if r in recs[:50])
    assert split_held_out(recs, 0.0)[1] == [] and split_held_out(recs, 1.0)[0] == []


def test_asterisk_transcript_helpers():
    assert _clean("at [@]") == "at" and _clean("[beep tone]") is None
    assert _clean("(1 second of silence)") is None
    assert _text_from_name("digits/7") == "seven" and _text_from_name("digits/40") == "forty"
    assert _text_from_name("letters/q") == "q" and _text_from_name("phonetic/z_p") == "zulu"
    assert _text_from_name("digits/h-1") is None and _text_from_name("vm-intro") is None
