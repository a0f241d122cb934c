"""benchmarks/readme_measured.py renders the benchmarks' JSON lines into the README block."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_measured.py"), *args],
                          capture_output=True, text=True)


def test_renders_and_writes_idempotently(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    machine = {"cpu": "Test CPU", "cpus": 2, "isa": "AVX2", "torch": "2.x", "torch_threads": 2, "load_1min": 0.1}
    codec = {"benchmark": "codec_speed", "machine": machine, "threads": 2, "codeclm_x_realtime": 20.0,
             "transformers_x_realtime": 10.0, "speedup_vs_transformers": 2.0, "speedup_vs_transformers_cpu": 2.1,
             "zero_pad_x_realtime": 19.0, "zero_pad_speedup_vs_transformers_cpu": 2.0,
             "streaming_20ms_rtf_1thread": 0.2, "streaming_20ms_x_realtime_1thread_cpu": 5.0,
             "identical_codes": True, "max_abs_audio_diff": 0.0, "stream_codes_equal_offline": True,
             "algorithmic_latency_ms": 13.33, "start_delay_frames": {"encoder": 7, "decoder": 7}}
    (res / "codec_speed.jsonl").write_text(json.dumps({**codec, "codeclm_x_realtime": 1.0}) + "\n" + json.dumps(codec) + "\n")
    out = _run("--results", str(res))
    assert out.returncode == 0, out.stderr
    assert "20.0x real time" in out.stdout and "Test CPU" in out.stdout  # the newest line, with its machine
    one_thread = {**codec, "threads": 1, "codeclm_x_realtime": 9.0}
    (res / "codec_speed.jsonl").write_text("\n".join(json.dumps(r) for r in (one_thread, {**codec, "codeclm_x_realtime": 1.0}, codec)) + "\n")
    out = _run("--results", str(res))  # the newest line of each thread count on that CPU
    assert "exact path (2 threads) | 20.0x" in out.stdout and "exact path (1 threads) | 9.0x" in out.stdout
    assert "1.0x real time" not in out.stdout
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Measured\n\nold text\n")
    assert _run("--results", str(res), "--readme", str(readme), "--write").returncode == 0
    first = readme.read_text()
    assert "old text" in first and "<!-- measured:speed:begin -->" in first
    assert _run("--results", str(res), "--readme", str(readme), "--write").returncode == 0
    assert readme.read_text() == first


def test_no_results_is_an_error(tmp_path):
    out = _run("--results", str(tmp_path))
    assert out.returncode != 0 and "no benchmark results" in out.stderr
