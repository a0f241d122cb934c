"""Shared fixtures: tiny random codecs that build and run in milliseconds; a SIGKILL helper."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from codeclm.codec import Codec, CodecConfig


def tiny_codec_config(**overrides) -> CodecConfig:
    kw = dict(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, target_bandwidths=[4.5, 9.0, 18.0],
              kmeans_init=False, lstm_layers=1, sample_rate=24000)
    kw.update(overrides)
    return CodecConfig(**kw)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models run faster on one thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_codec() -> Codec:
    torch.manual_seed(0)
    return Codec(tiny_codec_config()).eval()


def load_benchmark(name: str):
    """The module ``benchmarks/NAME.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kill_after_step(cmd: list[str], out_dir: Path, step: int, env: dict, timeout: float = 240) -> None:
    """Start a training run and SIGKILL it as soon as ``metrics.jsonl`` logs ``step``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        log = out_dir / "metrics.jsonl"
        if log.is_file() and f'"step": {step},' in log.read_text():
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
