"""The console script: help, roundtrip, one error handler (one line, non-zero exit), the shared
options and the deprecated spellings of renamed ones."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codeclm.audio import load_audio, save_audio
from codeclm.cli import GROUPS, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _leaves(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


COMMANDS = list(_leaves(build_parser()))


def _one_line_error(capsys, code: int, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.startswith("codeclm: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_help_lists_every_command_group(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("roundtrip", "compress", "decompress", "info", "data", "eval", "music", "clone", "say",
                    "voice", "export", "train"):
        assert f"\n    {command} " in out or f"\n    {command}\n" in out, command
    assert len(COMMANDS) > 20 and set(GROUPS) == {p.stem for p in (REPO / "codeclm" / "cli").glob("*.py")} - {
        "__init__", "__main__", "common"}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_exits_0_and_reads_as_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith(f"usage: codeclm {' '.join(command)}")
    for internal in ("`", ":mod:", ":func:", "codeclm.", "::", "%("):
        assert internal not in out, (internal, out)


@pytest.mark.parametrize("script", [["generate.py", "music"], ["generate.py", "clone"], ["train.py"],
                                    ["-m", "codeclm.pipelines.export"]])
def test_the_other_entry_points_share_the_parser(script, tmp_path):
    cmd = [sys.executable, *([str(REPO / script[0])] + script[1:] if script[0].endswith(".py") else script)]
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 0 and "--threads" in proc.stdout and "`" not in proc.stdout, proc.stderr


def test_shared_options_have_one_spelling_and_one_default():
    parser = build_parser()

    def options(*command):
        args = parser.parse_args([*command])
        return vars(args)

    compress = options("compress", "a.wav", "b.cclm")
    roundtrip = options("roundtrip", "a.wav", "b.wav")
    assert compress["bandwidth"] == roundtrip["bandwidth"] == 6.0
    assert compress["force"] is roundtrip["force"] is False
    tokenize = options("data", "tokenize", "m.jsonl", "-o", "c", "--model", "M", "--force", "-b", "3")
    assert (tokenize["model"], tokenize["force"], tokenize["bandwidth"]) == ("M", True, 3.0)
    assert options("eval", "codec", "x", "--bandwidth", "1.5", "3")["bandwidth"] == [1.5, 3.0]
    # the same default for unreadable files: stop (and say how to skip them)
    assert options("data", "scan", "d", "-o", "m")["skip_errors"] is options("data", "tokenize", "m", "-o", "c")[
        "skip_errors"] is False
    for command in (("music", "x"), ("clone",), ("say",), ("voice", "add", "r.wav", "--name", "n"),
                    ("export", "a", "b")):
        args = options(*command)
        assert args["force"] is False and args.get("device", "auto") == "auto", command


@pytest.mark.parametrize("old, new, value", [
    (["data", "tokenize", "m.jsonl", "-o", "c", "--codec", "M"], "--model", ("model", "M")),
    (["data", "tokenize", "m.jsonl", "-o", "c", "--overwrite"], "--force", ("force", True)),
    (["eval", "codec", "x", "--bandwidths", "1.5", "3"], "--bandwidth", ("bandwidth", [1.5, 3.0])),
    (["data", "tokenize", "m.jsonl", "-o", "c", "--fail-on-error"], "--skip-errors", ("skip_errors", False)),
])
def test_deprecated_spellings_still_work_with_a_note(old, new, value, capsys):
    args = build_parser().parse_args(old)
    assert getattr(args, value[0]) == value[1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is deprecated" in err and new in err, err


def test_building_the_parser_loads_no_pipeline_or_model_code():
    """``codeclm compress`` must not fail (or wait) because of the pipelines: commands import lazily."""
    code = ("import sys; from codeclm.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('codeclm.pipelines', 'codeclm.codec', "
            "'codeclm.lm', 'codeclm.training', 'codeclm.data', 'codeclm.evaluation', 'codeclm.compression'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    from codeclm.cli.export import DTYPE_NAMES
    from codeclm.pipelines.export import DTYPES

    assert sorted(DTYPE_NAMES) == sorted(DTYPES)


def test_deprecated_tokenize_spellings_end_to_end(tiny_codec, tmp_path, capsys):
    codec_dir = tiny_codec.save_pretrained(tmp_path / "codec")
    (tmp_path / "audio").mkdir()
    save_audio(tmp_path / "audio" / "a.wav", 0.3 * torch.sin(torch.linspace(0, 800, 4800))[None], 24000)
    assert main(["data", "scan", str(tmp_path / "audio"), "-o", str(tmp_path / "m.jsonl")]) == 0
    argv = ["data", "tokenize", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "cache"), "-q"]
    assert main(argv + ["--codec", str(codec_dir)]) == 0
    assert main(argv + ["--model", str(codec_dir)]) == 0
    assert "1 already cached" in capsys.readouterr().out
    assert main(argv + ["--codec", str(codec_dir), "--overwrite"]) == 0  # starts again: encodes it anew
    captured = capsys.readouterr()
    assert "1 records encoded" in captured.out
    assert "--codec is deprecated" in captured.err and "--overwrite is deprecated" in captured.err


def test_roundtrip_equals_encode_decode(tmp_path, tiny_codec, capsys):
    tiny_codec.save_pretrained(tmp_path / "codec")
    wav = 0.3 * torch.sin(torch.linspace(0, 800, 24000))[None]
    save_audio(tmp_path / "in.wav", wav, 24000, subtype="FLOAT")
    argv = ["roundtrip", str(tmp_path / "in.wav"), str(tmp_path / "out.wav"), "--model", str(tmp_path / "codec"),
            "-b", "9"]
    assert main(argv) == 0
    out, sr = load_audio(tmp_path / "out.wav")
    expected = tiny_codec.decode(tiny_codec.encode(wav[None], bandwidth=9))[0, :, :24000].clamp(-1, 1)
    assert sr == 24000 and out.shape == (1, 24000)
    assert (out - expected).abs().max() < 1e-4  # 16-bit WAV quantisation
    capsys.readouterr()
    _one_line_error(capsys, 1, main(argv), "out.wav: already exists", "--force")
    assert main(argv + ["--force", "-b", "4.5"]) == 0
    expected = tiny_codec.decode(tiny_codec.encode(wav[None], bandwidth=4.5))[0, :, :24000].clamp(-1, 1)
    assert (load_audio(tmp_path / "out.wav")[0] - expected).abs().max() < 1e-4


def test_errors_are_one_line_and_exit_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "codeclm.cli", "roundtrip", str(tmp_path / "missing.wav"),
                           str(tmp_path / "o.wav"), "--model", str(tmp_path)], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("codeclm: error:")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [
    ["compress", "{tmp}/missing.wav", "{tmp}/x.cclm"],
    ["decompress", "{tmp}/missing.cclm", "{tmp}/x.wav"],
    ["info", "{tmp}/missing.cclm"],
    ["roundtrip", "{tmp}/missing.wav", "{tmp}/x.wav", "--model", "{codec}"],
    ["eval", "codec", "{tmp}/missing.wav", "--model", "{codec}"],
    ["data", "tokenize", "{tmp}/missing.jsonl", "-o", "{tmp}/cache", "--model", "{codec}"],
    ["data", "scan", "{tmp}/missing", "-o", "{tmp}/m.jsonl"],
    ["data", "merge", "{tmp}/missing.jsonl", "-o", "{tmp}/m.jsonl"],
    ["clone", "--ref", "{tmp}/missing.wav", "--text", "Hello.", "-o", "{tmp}/x.wav"],
    ["voice", "add", "{tmp}/missing.wav", "--name", "anna", "--voices-dir", "{tmp}/voices"],
    ["music", "jazz", "--continue", "{tmp}/missing.wav", "-o", "{tmp}/x.wav"],
    ["export", "{tmp}/missing", "{tmp}/out"],
])
def test_a_missing_input_is_one_line_naming_it(argv, tmp_path, tiny_codec, capsys):
    codec = tiny_codec.save_pretrained(tmp_path / "codec")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{codec}", str(codec)) for a in argv]
    _one_line_error(capsys, 1, main(argv), str(tmp_path / "missing"))
    assert not any(p.name.startswith(("x.", "m.", "cache", "out")) for p in tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["clone", "--text", "Hello.", "-o", "{tmp}/x.wav"], "--ref or --voice"),
    (["clone", "--ref", "a.wav", "--voice", "anna", "--text", "Hello.", "-o", "{tmp}/x.wav"], "not both"),
    (["clone", "--ref", "a.wav", "--text", "Hello."], "-o/--output"),
    (["clone", "--jobs-file", "{tmp}/jobs.jsonl"], "--jobs-file needs --out-dir"),
    (["music", "--prompts-file", "{tmp}/p.txt"], "--prompts-file needs --out-dir"),
    (["train"], "a recipe is required"),
])
def test_usage_errors_found_after_parsing_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    _one_line_error(capsys, 2, main(argv), message)


def test_help_shows_the_defaults(capsys):
    for command, needle in ((["compress"], "codec bandwidth in kbps (default: 6.0)"),
                            (["roundtrip"], "codec bandwidth in kbps (default: 6.0)"),
                            (["music"], "the clip included) (default: 8.0)"),
                            (["data", "tokenize"], "(default: all codebooks)"),
                            (["eval", "codec"], "(default: every bandwidth of the model)")):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert needle in " ".join(capsys.readouterr().out.split()), command


def test_clone_options_are_documented_as_they_behave(capsys):
    with pytest.raises(SystemExit):
        main(["clone", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "usage: codeclm clone (--ref CLIP | --voice NAME) --text TEXT -o FILE" in out
    assert "one clip (required unless --jobs-file)" in out
    # the shipped model's own limits and languages, read from its folder
    import json

    voice = REPO / "checkpoints" / "voice"
    config = json.loads((voice / "valle" / "config.json").read_text())
    languages = json.loads((voice / "pipeline.json").read_text())["languages"]
    assert f"crops longer clips at {config['max_prompt_seconds']:g} s" in out
    assert f"{', '.join(languages)} for the shipped model" in out
    with pytest.raises(SystemExit):
        main(["say", "--help"])
    assert "jobs file" not in capsys.readouterr().out  # say has no jobs file
    with pytest.raises(SystemExit):
        main(["music", "--help"])
    assert "with --continue: the clip included" in " ".join(capsys.readouterr().out.split())


def test_closed_stdout_is_quiet(tmp_path):
    """``codeclm --help | head -1``: no BrokenPipeError traceback from the one handler's path either."""
    proc = subprocess.run(f"{sys.executable} -m codeclm.cli data --help | head -1", shell=True,
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.stdout.startswith("usage: codeclm data") and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def dia_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_dia_parity import tiny_dac, tiny_dia

    from codeclm.pipelines import VoiceClone

    return VoiceClone.from_hf(tiny_dia(), audio_tokenizer=tiny_dac()).save_pretrained(
        tmp_path_factory.mktemp("dia") / "dia")


@pytest.mark.parametrize("argv", [
    ["clone", "--voice", "anna", "--text", "[S1] Hello.", "-o", "{tmp}/x.wav"],
    ["say", "Hello.", "-o", "{tmp}/x.wav"],
    ["say", "--list-voices"],
    ["voice", "add", "{tmp}/ref.wav", "--name", "anna", "--voices-dir", "{tmp}/voices"],
])
def test_stored_voices_with_a_dia_folder_are_one_line(argv, dia_folder, tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "ref.wav", 0.3 * torch.sin(torch.linspace(0, 400, 44100)).numpy(), 44100)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--model", str(dia_folder), "-q"]
    _one_line_error(capsys, 1, main(argv), "Dia model has no saved or named voices", "--ref")
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "voices").exists()
