"""`generate.py music` / `codeclm music`: one prompt, a prompts file, continuation, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers")

from codeclm.cli import generate_main
from codeclm.cli import main as codeclm_main
from codeclm.cli.common import output_name, slugify
from codeclm.cli.music import read_prompts
from codeclm.pipelines import TextToMusic

REPO = Path(__file__).resolve().parents[1]
DUR = 0.02  # 15 frames of the tiny model (750 frames/s)


def build_tiny_music_folder(folder: Path) -> Path:
    """A tiny random MusicGen (transformers) imported with TextToMusic.from_hf and saved."""
    from test_musicgen_parity import tiny_musicgen, tiny_tokenizer

    TextToMusic.from_hf(tiny_musicgen(), tiny_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_music_folder(tmp_path_factory.mktemp("tiny_music"))


@pytest.fixture(scope="module")
def pipe(model_dir) -> TextToMusic:
    return TextToMusic.from_pretrained(model_dir)


def _read(path) -> np.ndarray:
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return data


def _as_written(wav: torch.Tensor, sr: int, tmp_path: Path) -> np.ndarray:
    """What save_audio gives for a tensor (16-bit WAV), to compare with a CLI output."""
    from codeclm.audio import save_audio

    ref = tmp_path / "ref.wav"
    save_audio(ref, wav, sr)
    return _read(ref)


def test_one_prompt_matches_the_pipeline(model_dir, pipe, tmp_path, capsys):
    out = tmp_path / "a.wav"
    rc = generate_main(["music", "calm piano", "--duration", str(DUR), "-o", str(out), "--model", str(model_dir),
                        "--seed", "3", "--top-k", "10", "--temperature", "1.2", "--guidance", "2", "--quiet"])
    assert rc == 0 and out.exists()
    assert capsys.readouterr().err.count("error") == 0
    ref = pipe.generate(["calm piano"], duration=DUR, seed=3, top_k=10, temperature=1.2, guidance_scale=2.0)[0]
    assert np.array_equal(_read(out), _as_written(ref, pipe.sample_rate, tmp_path))
    assert sf.info(str(out)).samplerate == pipe.sample_rate
    # refuse to overwrite, unless --force
    rc = generate_main(["music", "calm piano", "-d", str(DUR), "-o", str(out), "--model", str(model_dir), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "exists" in err and "--force" in err and err.count("\n") == 1
    rc = generate_main(["music", "jazz", "-d", str(DUR), "-o", str(out), "--model", str(model_dir), "-q", "--force"])
    assert rc == 0


def test_codeclm_music_is_the_same_command(model_dir, tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    assert codeclm_main(["music", "jazz", "-d", str(DUR), "-o", str(a), "--model", str(model_dir), "-q"]) == 0
    assert generate_main(["music", "jazz", "-d", str(DUR), "-o", str(b), "--model", str(model_dir), "-q"]) == 0
    assert np.array_equal(_read(a), _read(b))


def test_prompts_file_one_file_per_prompt(model_dir, pipe, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("calm piano\n\n# a comment\nloud rock guitar, fast drums!\n  jazz  \n")
    assert read_prompts(prompts) == ["calm piano", "loud rock guitar, fast drums!", "jazz"]
    out_dir = tmp_path / "out"
    rc = generate_main(["music", "--prompts-file", str(prompts), "--out-dir", str(out_dir), "-d", str(DUR),
                        "--model", str(model_dir), "--seed", "5", "-q"])
    assert rc == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["000_calm-piano.wav", "001_loud-rock-guitar-fast-drums.wav", "002_jazz.wav"]
    # prompt i uses seed + i
    ref = pipe.generate(["loud rock guitar, fast drums!"], duration=DUR, seed=6)[0]
    assert np.array_equal(_read(out_dir / names[1]), _as_written(ref, pipe.sample_rate, tmp_path))
    rc = generate_main(["music", "--prompts-file", str(prompts), "--out-dir", str(out_dir), "-d", str(DUR),
                        "--model", str(model_dir), "-q"])
    assert rc == 1  # outputs exist


def test_continue_starts_with_the_clip(model_dir, pipe, tmp_path):
    from codeclm.audio import save_audio
    from codeclm.pipelines.longform import encode_clip, generate_long

    clip = tmp_path / "clip.wav"
    t = torch.arange(int(0.01 * pipe.sample_rate)) / pipe.sample_rate
    save_audio(clip, 0.5 * torch.sin(2 * torch.pi * 440 * t)[None], pipe.sample_rate)
    out = tmp_path / "more.wav"
    rc = generate_main(["music", "calm piano", "--continue", str(clip), "-d", "0.03", "-o", str(out),
                        "--model", str(model_dir), "-q"])
    assert rc == 0
    codes = encode_clip(pipe, clip)
    audio, full, _ = generate_long(pipe, "calm piano", 0.03, prompt_codes=codes, return_codes=True)
    assert torch.equal(full[:, :, : codes.shape[2]], codes)
    assert np.array_equal(_read(out), _as_written(audio, pipe.sample_rate, tmp_path))


def test_long_duration_goes_window_by_window(model_dir, pipe, tmp_path):
    out = tmp_path / "long.wav"
    # the tiny LM's context is 253 frames (0.34 s): 0.5 s needs two windows
    rc = generate_main(["music", "calm piano", "-d", "0.5", "-o", str(out), "--model", str(model_dir), "-q"])
    assert rc == 0 and sf.info(str(out)).frames == round(0.5 * pipe.sample_rate)


@pytest.mark.parametrize("argv, message", [
    (["music", "", "-o", "{tmp}/x.wav"], "prompt is empty"),
    (["music", "   ", "-o", "{tmp}/x.wav"], "prompt is empty"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "-d", "0"], "--duration"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "-d", "-2"], "--duration"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "-d", "nan"], "--duration"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "-d", "10000"], "at most"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "--continue", "{tmp}/absent.wav"], "no such file"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "--continue", "{tmp}/junk.wav"], "not a readable audio file"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "--top-p", "2"], "top_p"),
    (["music", "jazz", "-o", "{tmp}/x.mp4"], "extension"),
    (["music", "jazz"], "-o"),
    (["music", "--prompts-file", "{tmp}/absent.txt", "--out-dir", "{tmp}/o"], "no such prompts file"),
    (["music", "--prompts-file", "{tmp}/empty.txt", "--out-dir", "{tmp}/o"], "no prompts"),
    (["music", "--prompts-file", "{tmp}/empty.txt"], "--out-dir"),
    (["music", "jazz", "-o", "{tmp}/x.wav", "--window", "0.01", "--overlap", "0.02", "-d", "0.5"], "overlap"),
])
def test_bad_input_is_one_line_and_nonzero(model_dir, tmp_path, capsys, argv, message):
    (tmp_path / "junk.wav").write_text("not audio")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--model", str(model_dir), "-q"]
    assert generate_main(argv) == (2 if message in ("-o", "--out-dir") else 1)  # 2: a usage error
    err = capsys.readouterr().err
    assert err.startswith("generate.py: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "o").exists()


def test_missing_model_folder_and_default(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "x.wav")
    assert generate_main(["music", "jazz", "-o", out, "--model", str(tmp_path / "nope"), "-q"]) == 1
    assert "no such model folder" in capsys.readouterr().err
    monkeypatch.setenv("CODECLM_CHECKPOINTS", str(tmp_path))
    assert codeclm_main(["music", "jazz", "-o", out, "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("codeclm: error: ") and "music" in err and err.count("\n") == 1


def test_generate_py_script(tmp_path):
    env_run = subprocess.run([sys.executable, str(REPO / "generate.py"), "music", "jazz", "-o",
                              str(tmp_path / "x.wav"), "--model", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120, check=False)
    assert env_run.returncode == 1
    assert env_run.stderr.strip().splitlines() == [f"generate.py: error: {tmp_path / 'nope'}: no such model folder"]
    help_run = subprocess.run([sys.executable, str(REPO / "generate.py"), "music", "--help"],
                              capture_output=True, text=True, timeout=120, check=False)
    assert help_run.returncode == 0 and "--prompts-file" in help_run.stdout


def test_names():
    assert slugify("Calm lo-fi piano, 80 BPM!") == "calm-lo-fi-piano-80-bpm"
    assert slugify("!!!") == "prompt"
    assert output_name(3, "jazz", 10) == "003_jazz.wav"
    assert output_name(7, "jazz", 2000, "flac") == "0007_jazz.flac"
