"""``evaluate_codec`` and ``codeclm eval codec`` on two short generated clips with a tiny codec."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.audio import load_audio
from codeclm.baselines import opus_available
from codeclm.cli import main
from codeclm.data.manifest import AudioRecord
from codeclm.errors import CodecLMError, CodesError
from codeclm.evaluation import default_metrics, evaluate_codec
from codeclm.metrics import si_sdr

SR = 24000
BANDWIDTHS = [4.5, 9.0]  # 1 and 2 codebooks of the tiny codec


@pytest.fixture
def clips(tmp_path):
    """Two 0.25 s mono clips at the codec's rate: a chirp-like tone and a noisy tone."""
    folder = tmp_path / "clips"
    folder.mkdir()
    t = np.arange(SR // 4) / SR
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t), SR)
    sf.write(folder / "b.wav", 0.2 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size), SR)
    return folder


@pytest.fixture
def codec_dir(tmp_path, tiny_codec):
    return tiny_codec.save_pretrained(tmp_path / "codec")


def test_rows_structure_and_finite(tiny_codec, clips):
    paths = sorted(clips.glob("*.wav"))
    rows = evaluate_codec(tiny_codec, paths, BANDWIDTHS)
    assert [(r["system"], r["bandwidth_kbps"]) for r in rows] == [("codeclm", 4.5), ("codeclm", 9)]
    assert [r["n_q"] for r in rows] == [1, 2]
    for row in rows:
        assert row["files"] == 2 and row["seconds"] == pytest.approx(0.5)
        for key in ("achieved_kbps", "raw_kbps", "si_sdr", "mel", "stft", "x_realtime"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), key
        assert "pesq" not in row  # plain paths: no transcript, so no speech metrics by default
        json.dumps(row)


def test_si_sdr_matches_hand_computation(tiny_codec, clips):
    path = clips / "a.wav"
    (row,) = evaluate_codec(tiny_codec, [path], [9.0], metrics=["si_sdr"])
    wav, _ = load_audio(path, SR, 1)
    with torch.inference_mode():
        est = tiny_codec.decode(tiny_codec.encode(wav[None], bandwidth=9.0))[0, :, : wav.shape[-1]]
    assert row["si_sdr"] == pytest.approx(si_sdr(wav, est), rel=1e-3, abs=1e-3)
    assert set(row) >= {"system", "bandwidth_kbps", "achieved_kbps", "files", "si_sdr", "x_realtime"}
    assert "mel" not in row


def test_seconds_crop_and_default_metrics(tiny_codec, clips):
    (row,) = evaluate_codec(tiny_codec, [clips / "a.wav"], [4.5], metrics=["stft"], seconds=0.1)
    assert row["seconds"] == pytest.approx(0.1)
    speech = [AudioRecord(str(clips / "a.wav"), 0.25, SR, 1, text="hello")]
    assert default_metrics(speech) == ("si_sdr", "mel", "stft", "lines", "phase", "pesq", "stoi")
    assert default_metrics([str(clips / "a.wav")]) == ("si_sdr", "mel", "stft", "lines", "phase")


def test_cli_json_lines_with_opus(codec_dir, clips, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    opus = opus_available()
    argv = ["eval", "codec", "--model", str(codec_dir), str(clips), "-b", "4.5", "9", "-q", "-o", str(out)]
    assert main(argv + (["--opus"] if opus else [])) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [json.loads(line) for line in out.read_text().splitlines()]
    systems = [(r["system"], r["bandwidth_kbps"]) for r in printed]
    expected = [("codeclm", 4.5), ("codeclm", 9)]
    if opus:
        expected = [("codeclm", 4.5), ("opus", 4.5), ("codeclm", 9), ("opus", 9)]
    assert systems == expected
    for row in printed:
        assert row["files"] == 2 and all(math.isfinite(row[k]) for k in ("si_sdr", "mel", "stft", "achieved_kbps"))
    if opus:
        assert printed[1]["achieved_kbps"] > 1 and printed[3]["si_sdr"] > printed[1]["si_sdr"] - 5


def test_bad_inputs(tiny_codec, codec_dir, clips, tmp_path, capsys):
    with pytest.raises(CodesError, match="codebooks"):
        evaluate_codec(tiny_codec, [clips / "a.wav"], [100.0])
    with pytest.raises(CodecLMError, match="unknown metric"):
        evaluate_codec(tiny_codec, [clips / "a.wav"], [4.5], metrics=["nope"])
    with pytest.raises(CodecLMError, match="no audio"):
        evaluate_codec(tiny_codec, [], [4.5])

    empty = tmp_path / "empty"
    empty.mkdir()
    bad_manifest = tmp_path / "bad.jsonl"
    bad_manifest.write_text("{not json\n")
    for argv, message in (([str(empty), "-b", "4.5"], "no audio files found"),
                          ([str(bad_manifest), "-b", "4.5"], "malformed JSON"),
                          ([str(tmp_path / "missing")], "no such file"),
                          ([str(clips), "-b", "100"], "but the model has 4")):
        code = main(["eval", "codec", "--model", str(codec_dir), "-q", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 1 and err.startswith("codeclm: error:") and "\n" not in err
        assert message in err


def test_codebook_perplexity_counts_effective_codes(tiny_codec, clips):
    from codeclm.evaluation.codec_eval import codebook_perplexity

    usage = torch.zeros(2, 8, dtype=torch.long)
    usage[0, :4] = 10  # four codes equally often
    usage[1, 0] = 5  # one code only
    assert codebook_perplexity(usage) == [4.0, 1.0]
    (row,) = evaluate_codec(tiny_codec, [clips / "a.wav"], [4.5], metrics=["stft"])
    n_q = tiny_codec.num_codebooks_for(4.5)
    assert len(row["codebook_perplexity"]) == n_q
    assert all(1.0 <= p <= tiny_codec.cardinality for p in row["codebook_perplexity"])


@pytest.mark.skipif(not opus_available(), reason="needs ffmpeg with libopus")
def test_opus_at_its_own_rates(tiny_codec, clips):
    rows = evaluate_codec(tiny_codec, [clips / "a.wav"], [4.5], metrics=["mel"], opus=[6.0, 12.0])
    assert [(r["system"], r["bandwidth_kbps"]) for r in rows] == [("codeclm", 4.5), ("opus", 6), ("opus", 12)]
    assert rows[1]["achieved_kbps"] < rows[2]["achieved_kbps"] and all(math.isfinite(r["mel"]) for r in rows)


@pytest.mark.skipif(not opus_available(), reason="needs ffmpeg with libopus")
def test_codec_quality_benchmark_runs_its_tiny_case():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "codec_quality.py"
    out = subprocess.run([sys.executable, str(script), "--tiny"], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["benchmark"] == "codec_quality" and set(row["unseen_voices"]) == {"codeclm@3", "codeclm@6", "opus@5",
                                                                                 "opus@6"}
    assert row["goals"]["unseen_6kbps_above_opus6"] is False  # a random codec is no match for Opus
    assert all(math.isfinite(v["stoi"]) for v in row["unseen_voices"].values())
