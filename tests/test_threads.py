"""--threads on every command, and a default thread count that does not oversubscribe."""

import argparse

import pytest
import torch

from codeclm import threads
from codeclm.cli import build_parser, run


def _leaves(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


def test_every_command_has_threads():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) > 5
    for path, parser in leaves:
        assert any("--threads" in a.option_strings for a in parser._actions), path


def test_generate_py_parser_gets_threads_through_run(capsys):
    parser = build_parser(("music", "voice"), prog="generate.py")
    with pytest.raises(SystemExit):
        run(parser, ["music", "--help"])
    assert "--threads" in capsys.readouterr().out


def test_threads_applied_and_restored_default(monkeypatch):
    seen = {}
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("job")
    p.set_defaults(func=lambda args: seen.setdefault("n", torch.get_num_threads()) and 0)
    before = torch.get_num_threads()
    try:
        assert run(parser, ["job", "--threads", "1"]) == 0
        assert seen["n"] == 1
    finally:
        torch.set_num_threads(before)


def test_default_threads_respects_env_and_load(monkeypatch):
    monkeypatch.setenv("CODECLM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.delenv("CODECLM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.05: 3.2)
    assert threads.default_threads() == 5  # 3 cores busy elsewhere
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.05: 40.0)
    assert threads.default_threads() == 1
    monkeypatch.undo()
    assert 0 <= threads.busy_cpus(0.02) <= (threads.os.cpu_count() or 1) + 1


def test_machine_info_fields():
    info = threads.machine_info()
    assert info["cpus"] >= 1 and info["torch_threads"] >= 1 and info["cpu"]
