"""The extra training sources of the codec recipe: flite voices, Asterisk es/it/ru, klettres."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from codeclm.data import real
from codeclm.data.manifest import read_manifest
from codeclm.data.synth_speech import FLITE_VOICES, synth_flite
from codeclm.errors import CodecLMError


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
def test_flite_is_deterministic_resumable_and_transcribed(tmp_path):
    a = synth_flite(tmp_path / "a", 3, seed=4, progress=False)
    b = synth_flite(tmp_path / "b", 3, seed=4, progress=False)
    assert [r.text for r in a] == [r.text for r in b] and [r.speaker for r in a] == [r.speaker for r in b]
    for ra, rb in zip(a, b):
        assert Path(tmp_path / "a" / ra.path).read_bytes() == Path(tmp_path / "b" / rb.path).read_bytes()
        assert ra.speaker.removeprefix("flite-") in FLITE_VOICES and ra.duration > 0.5 and ra.text
    first = (tmp_path / "a" / a[0].path).stat().st_mtime_ns
    again = synth_flite(tmp_path / "a", 4, seed=4, progress=False)  # resumes: keeps files, adds one
    assert len(again) == 4 and (tmp_path / "a" / a[0].path).stat().st_mtime_ns == first
    assert len(read_manifest(tmp_path / "a" / "manifest.jsonl")) == 4


def test_flite_refuses_negative_count(tmp_path):
    with pytest.raises(CodecLMError, match="n_utterances"):
        synth_flite(tmp_path, -1)


@pytest.mark.skipif(not Path(real.ASTERISK_LANGUAGES["es"][0]).is_dir(), reason="asterisk-core-sounds-es-wav missing")
def test_asterisk_other_languages_split_by_hash(tmp_path):
    records = real.asterisk_other_speech(["es"])
    assert records and all(r.speaker == "asterisk-es" and r.language == "es" and r.duration > 0 for r in records)
    train, held = real.split_held_out(records, 0.1)
    assert 0 < len(held) < len(records) * 0.2 and len(train) + len(held) == len(records)
    assert real.split_held_out(list(reversed(records)), 0.1)[1] == list(reversed(held))  # order-free membership


def test_asterisk_other_refuses_unknown_language():
    with pytest.raises(CodecLMError, match="no Asterisk prompts for language 'xx'"):
        real.asterisk_other_speech(["xx"])


@pytest.mark.skipif(not Path(real.KLETTRES_DIR).is_dir(), reason="klettres-data missing")
def test_klettres_holds_out_per_language_file():
    records = real.klettres_speech()
    langs = {r.language for r in records}
    assert len(langs) >= 10 and all(r.speaker == f"klettres-{r.language}" for r in records)
    assert sf.info(records[0].path).samplerate > 0
    # the same letter in two languages is two files: the held-out key includes the language folder
    _, held = real.split_held_out(records, 0.1)
    keys = {tuple(Path(r.path).parts[-3:]) for r in held}
    assert len(keys) == len(held)
