"""The console script: help, roundtrip, and one-line errors with exit code 1."""

import subprocess
import sys

import torch

from codeclm.audio import load_audio, save_audio
from codeclm.cli import main


def test_help_lists_every_command_group(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("roundtrip", "compress", "decompress", "info", "data", "eval", "music"):
        assert command in out


def test_roundtrip_equals_encode_decode(tmp_path, tiny_codec):
    tiny_codec.save_pretrained(tmp_path / "codec")
    wav = 0.3 * torch.sin(torch.linspace(0, 800, 24000))[None]
    save_audio(tmp_path / "in.wav", wav, 24000, subtype="FLOAT")
    assert main(["roundtrip", str(tmp_path / "in.wav"), str(tmp_path / "out.wav"), "--model", str(tmp_path / "codec"),
                 "-b", "9"]) == 0
    out, sr = load_audio(tmp_path / "out.wav")
    expected = tiny_codec.decode(tiny_codec.encode(wav[None], bandwidth=9))[0, :, :24000].clamp(-1, 1)
    assert sr == 24000 and out.shape == (1, 24000)
    assert (out - expected).abs().max() < 1e-4  # 16-bit WAV quantisation


def test_errors_are_one_line_and_exit_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "codeclm.cli", "roundtrip", str(tmp_path / "missing.wav"),
                           str(tmp_path / "o.wav"), "--model", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("codeclm: error:")
    assert "Traceback" not in proc.stderr
