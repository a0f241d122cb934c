"""Voice-cloning evaluation: WER, pocketsphinx on espeak-ng speech, Resemblyzer similarity,
``evaluate_clone`` with fake pipelines, ``read_pairs`` and the ``codeclm eval clone`` error path.

Bounds were measured with espeak-ng 1.51 / pocketsphinx 5.1.1 / resemblyzer 0.1.4 (see the
comments next to each) and leave a wide margin."""

import json
import shutil
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.audio import load_audio, resample
from codeclm.cli import main
from codeclm.errors import AudioError, CodecLMError
from codeclm.evaluation.asr import (
    ASRError,
    MissingPackageError,
    normalize_words,
    transcribe,
    word_edit_distance,
    word_error_rate,
)
from codeclm.evaluation.clone_eval import ClonePair, evaluate_clone, read_pairs

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

DIGITS = "one two three four five six seven eight nine"
DOCTOR = "please call the doctor today"


def _say(path, voice: str, text: str):
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """espeak-ng clips (22,050 Hz mono): {(voice, name): path}."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("speech")
    texts = {"digits": DIGITS, "doctor": DOCTOR, "thanks": "thank you very much",
             "hello": "hello world this is a test",
             "long": "please call the doctor today, the old teacher is waiting"}
    clips = {}
    for voice, names in (("en-us+f2", ("digits", "doctor", "thanks", "hello", "long")),
                         ("en-us+m3", ("doctor", "long")), ("en-us+f4", ("digits", "long"))):
        for name in names:
            clips[voice, name] = _say(folder / f"{voice.replace('+', '_')}_{name}.wav", voice, texts[name])
    return clips


# -- WER ----------------------------------------------------------------------------------------

def test_word_edit_distance_known_values():
    assert word_edit_distance([], []) == 0
    assert word_edit_distance("a b c".split(), []) == 3
    assert word_edit_distance([], "a b".split()) == 2
    assert word_edit_distance("a b c".split(), "a x c d".split()) == 2  # one substitution, one insertion
    assert word_edit_distance("the cat sat on the mat".split(), "cat sat on a mat".split()) == 2
    assert word_edit_distance("a b c d".split(), "b c d a".split()) == 2


def test_normalize_words_case_punctuation_digits():
    assert normalize_words("Hello, World!") == ["hello", "world"]
    assert normalize_words("I have 3 cats.") == ["i", "have", "three", "cats"]
    assert normalize_words("Twenty-four \u201cquoted\u201d words; don't stop...") == \
        ["twenty", "four", "quoted", "words", "don't", "stop"]
    assert normalize_words("Dr. Smith paid $5 at 10:30") == \
        ["doctor", "smith", "paid", "five", "dollars", "at", "ten", "thirty"]
    assert normalize_words("  ?! ") == [] and normalize_words("") == []
    assert normalize_words("Ho 3 gatti", "it") == ["ho", "tre", "gatti"]  # num2words outside normalize_text


def test_word_error_rate_corpus_values():
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0
    assert word_error_rate(["I have 3 cats"], ["i have three cats"]) == 0.0
    assert word_error_rate("hello world", "hello word") == 0.5
    # corpus WER: (1 deletion + 2 insertions) / 6 reference words, not the mean of 0.25 and 1.0
    assert word_error_rate(["a b c d", "e f"], ["a b c", "e f g h"]) == pytest.approx(3 / 6)
    assert word_error_rate(["a b"], ["x y z w"]) == 2.0  # can exceed 1
    with pytest.raises(ASRError, match="as many"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ASRError, match="no words"):
        word_error_rate(["..."], ["a"])


# -- ASR ----------------------------------------------------------------------------------------

@needs_espeak
def test_pocketsphinx_transcribes_espeak_speech(speech):
    pytest.importorskip("pocketsphinx")
    names = ("digits", "doctor", "thanks", "hello")
    refs = [DIGITS, DOCTOR, "thank you very much", "hello world this is a test"]
    hyps = []
    for name in names:
        wav, sr = load_audio(speech["en-us+f2", name])
        hyps.append(transcribe(wav, sr))
    assert all(h == h.lower() and "  " not in h for h in hyps)
    # measured: 0.125 (digits, doctor, thanks exact; "hello world receive a dance")
    assert word_error_rate(refs, hyps) < 0.35, hyps
    # the transcripts carry the content: against the wrong sentences nearly every word is wrong
    assert word_error_rate(refs[1:] + refs[:1], hyps) > 0.8
    # [N] input at another rate gives words too; digital silence gives nothing
    wav, sr = load_audio(speech["en-us+f2", "digits"])
    assert word_error_rate(DIGITS, transcribe(wav[0], sr)) < 0.35
    assert transcribe(torch.zeros(1, 16000), 16000) == ""
    # deterministic: a transcript does not depend on what was transcribed before (pocketsphinx
    # adapts its cepstral mean across utterances unless reset)
    example, sr = load_audio(Path(__file__).resolve().parents[1] / "examples" / "speech.wav")
    from codeclm.evaluation import asr

    asr._decoder.cache_clear()  # a fresh decoder, as in a new process
    first = transcribe(example[:, : 5 * sr], sr)
    transcribe(example[:, 2 * sr:], sr)
    assert transcribe(example[:, : 5 * sr], sr) == first
    with pytest.raises(ASRError, match="only English"):
        transcribe(wav, sr, language="de")
    with pytest.raises(AudioError):
        transcribe(torch.full((1, 100), float("nan")), 16000)


def test_missing_packages_give_one_line_errors(monkeypatch):
    from codeclm.evaluation import asr, speaker

    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    asr._decoder.cache_clear()
    speaker._encoder.cache_clear()
    try:
        with pytest.raises(MissingPackageError, match=r"pip install 'pocketsphinx>=5'") as err:
            transcribe(torch.zeros(1, 1600), 16000)
        assert "\n" not in str(err.value) and isinstance(err.value, CodecLMError)
        with pytest.raises(MissingPackageError, match="pip install resemblyzer --no-deps webrtcvad-wheels"):
            speaker.speaker_embedding(torch.zeros(1, 1600), 16000)
    finally:
        asr._decoder.cache_clear()
        speaker._encoder.cache_clear()


# -- speaker similarity -------------------------------------------------------------------------

@needs_espeak
def test_speaker_similarity_same_voice_beats_other_voice(speech):
    pytest.importorskip("resemblyzer")
    from codeclm.evaluation.speaker import cosine, speaker_embedding

    emb = {key: speaker_embedding(*load_audio(speech[key])) for key in
           [("en-us+m3", "doctor"), ("en-us+m3", "long"), ("en-us+f4", "digits"), ("en-us+f4", "long")]}
    for e in emb.values():
        assert e.shape == (256,) and e.dtype == np.float32 and np.linalg.norm(e) == pytest.approx(1, abs=1e-5)
    same_m3 = cosine(emb["en-us+m3", "doctor"], emb["en-us+m3", "long"])
    same_f4 = cosine(emb["en-us+f4", "digits"], emb["en-us+f4", "long"])
    cross_same_text = cosine(emb["en-us+m3", "long"], emb["en-us+f4", "long"])
    cross = cosine(emb["en-us+m3", "doctor"], emb["en-us+f4", "digits"])
    # measured: same voice 0.95 (m3) / 0.85 (f4) across sentences; m3 vs f4: 0.56 same sentence, 0.46 not
    assert min(same_m3, same_f4) > max(cross_same_text, cross) + 0.15, (same_m3, same_f4, cross_same_text, cross)
    assert cosine(emb["en-us+m3", "long"], emb["en-us+m3", "long"]) == pytest.approx(1.0)
    # an embedding does not depend on the rate or the channel layout it comes in
    wav, sr = load_audio(speech["en-us+m3", "long"])
    stereo_16k = resample(wav.expand(2, -1), sr, 16000)
    assert cosine(speaker_embedding(stereo_16k, 16000), emb["en-us+m3", "long"]) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(AudioError, match="silent"):
        speaker_embedding(torch.zeros(1, 16000), 16000)
    assert cosine(np.zeros(256), emb["en-us+m3", "long"]) == 0.0


# -- evaluate_clone with fake pipelines ---------------------------------------------------------

class FakeClone:
    """Duck-typed VoiceClone: ``mode`` 'echo' returns the reference itself, 'silence' zeros,
    'noise' the same noise whatever the reference."""

    sample_rate = 22050

    def __init__(self, mode: str):
        self.mode = mode
        self.calls = []

    def generate(self, text, ref_audio, ref_text=None, seed=0, language="en"):
        self.calls.append((text, ref_audio, ref_text, seed, language))
        if self.mode == "echo":
            return load_audio(ref_audio, self.sample_rate, 1)[0]
        if self.mode == "silence":
            return torch.zeros(1, self.sample_rate)
        return 0.1 * torch.randn(1, 2 * self.sample_rate, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def clone_pairs(speech):
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    return [ClonePair(str(speech["en-us+f2", "digits"]), DIGITS, DIGITS, "en"),
            (str(speech["en-us+m3", "doctor"]), DOCTOR, DOCTOR, "en")]


@needs_espeak
def test_evaluate_clone_echo_pipeline(clone_pairs):
    pipe = FakeClone("echo")
    res = evaluate_clone(pipe, clone_pairs, seed=7, progress=False, details=True)
    json.dumps(res)
    assert {"wer", "sim_own", "sim_other", "rtf", "n", "sim_margin", "ref_wer"} <= set(res)
    assert res["n"] == 2 and res["n_wer"] == 2 and res["n_ref_wer"] == 2 and res["n_silent"] == 0
    assert [c[3] for c in pipe.calls] == [7, 7] and pipe.calls[1][2] == DOCTOR
    assert res["sim_own"] == pytest.approx(1.0, abs=1e-3)  # the output is the reference
    assert res["wer"] == res["ref_wer"]  # same audio, same target text: the ASR's own floor
    # measured: wer 0.357 (f2 digits exact; the m3 voice's "please call ..." heard as "also to")
    assert res["wer"] < 0.6
    # measured: sim_other 0.566 (f2 vs m3), margin 0.434
    assert 0.3 < res["sim_other"] < 0.8 and res["sim_margin"] > 0.2
    assert res["rtf"] is not None and res["rtf"] >= 0
    assert res["seconds"] > 2 and len(res["items"]) == 2 and res["items"][0]["hyp"]


@needs_espeak
def test_evaluate_clone_silence_and_noise(clone_pairs):
    res = evaluate_clone(FakeClone("silence"), clone_pairs, progress=False)
    assert res["n_silent"] == 2 and res["sim_own"] == 0.0 and res["sim_other"] == 0.0
    assert res["wer"] == 1.0  # nothing recognised: every target word is a deletion
    assert res["seconds"] == 2.0
    res = evaluate_clone(FakeClone("noise"), clone_pairs, progress=False)
    # one output for both references: as close to its "own" as to the "other" one
    assert res["n_silent"] == 0 and abs(res["sim_margin"]) < 1e-3


def test_evaluate_clone_bad_input(tmp_path):
    with pytest.raises(CodecLMError, match="no pairs"):
        evaluate_clone(FakeClone("echo"), [], progress=False)
    with pytest.raises(CodecLMError, match="pair 0"):
        evaluate_clone(FakeClone("echo"), [("only-a-path",)], progress=False)
    with pytest.raises(CodecLMError, match="sample_rate"):
        evaluate_clone(object(), [("a.wav", None, "hi", "en")], progress=False)


# -- read_pairs and the CLI ---------------------------------------------------------------------

def test_read_pairs_and_errors(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(1600), 16000)
    (tmp_path / "sub").mkdir()
    good = tmp_path / "sub" / "pairs.jsonl"
    good.write_text(json.dumps({"ref": "../a.wav", "text": "Hi there."}) + "\n\n"
                    + json.dumps({"ref": str(tmp_path / "a.wav"), "ref_text": "x", "text": "Hola.",
                                  "language": "es", "speaker": "s1"}) + "\n")
    pairs = read_pairs(good)
    assert pairs == [ClonePair(str(good.resolve().parent / "../a.wav"), None, "Hi there.", "en", None),
                     ClonePair(str(tmp_path / "a.wav"), "x", "Hola.", "es", "s1")]
    assert tuple(pairs[1])[:4] == (str(tmp_path / "a.wav"), "x", "Hola.", "es")  # a plain tuple too

    cases = {"{not json": "malformed JSON",
             "[1, 2]": "expected a JSON object",
             json.dumps({"ref": "a.wav"}): r"missing key\(s\) text",
             json.dumps({"ref": "a.wav", "text": "x", "ref_txt": "y"}): r"unknown key\(s\) ref_txt",
             json.dumps({"ref": "a.wav", "text": ""}): "'text' must be a non-empty string",
             json.dumps({"ref": "a.wav", "text": "x", "ref_text": 3}): "'ref_text' must be a string",
             json.dumps({"ref": "gone.wav", "text": "x"}): "reference audio",
             "": "no pairs"}
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"ref": "a.wav", "text": "ok"}) + "\n" + line + "\n" if line else "\n")
        with pytest.raises(CodecLMError, match=message) as err:
            read_pairs(bad)
        assert "\n" not in str(err.value)
        if line:
            assert str(err.value).startswith(f"{bad}:2:")
    with pytest.raises(CodecLMError, match="no such pairs file"):
        read_pairs(tmp_path / "missing.jsonl")


def test_cli_eval_clone_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ref": "nope.wav", "text": "hi"}\n')
    for argv, message in (([str(tmp_path / "missing.jsonl")], "no such pairs file"),
                          ([str(bad), "--json"], "reference audio")):
        code = main(["eval", "clone", "--model", str(tmp_path), *argv])
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert code == 1 and err.startswith("codeclm: error:") and "\n" not in err and message in err
        assert captured.out == ""
