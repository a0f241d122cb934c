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


def test_imported_models_and_frame_codec_rows(tmp_path):
    machine = {"cpu": "Test CPU", "cpus": 2, "isa": "AMX", "torch": "2.x", "load_1min": 0.0}
    rows = {
        "frame_codec_speed": {"machine": machine, "model": "checkpoints/codec", "bandwidth_kbps": 6.0, "threads": 1,
                              "offline_x_realtime": 50.0, "streaming_20ms_x_realtime": 4.2,
                              "offline_x_realtime_cpu": 51.0, "streaming_20ms_x_realtime_cpu": 4.3,
                              "stream_equals_offline": True, "kernels": {"fbgemm_fp16": 3}},
        "dac_speed": {"machine": machine, "parameters_M": 76.6, "threads": 1, "codeclm_x_realtime": 0.2,
                      "transformers_x_realtime": 0.16, "speedup_vs_transformers": 1.25, "decode_only_speedup": 1.1,
                      "identical_codes": True, "max_abs_audio_diff": 0.0, "bf16_decode_x_realtime": 0.27,
                      "bf16_decode_speedup_vs_transformers": 1.69, "bf16_decode_speedup_vs_transformers_cpu": 1.7,
                      "bf16_decode_only_speedup": 2.2, "bf16_decode_snr_db": 43.1},
        "dia_speed": {"machine": machine, "config": {"dim": 512, "layers": 6}, "threads": 1, "codeclm_steps_per_s": 80.0,
                      "transformers_steps_per_s": 20.0, "speedup": 4.0, "speedup_cpu_time": 4.1, "same_tokens": True,
                      "steps": 200, "matmul_floor_steps_per_cpu_s": 90.0, "max_speedup_cpu_time": 4.5,
                      "codeclm_int8_steps_per_s": 120.0, "int8_speedup": 6.0, "int8_speedup_cpu_time": 6.1,
                      "int8_vs_fp32": 1.5, "int8_linear_rel_err": 0.008},
    }
    for name, r in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"benchmark": name, **r}) + "\n")
    out = _run("--results", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "the shipped codec (checkpoints/codec, 6.0 kbps)" in out.stdout and "50.0x / 4.2x real time" in out.stdout
    assert "| DAC with the bf16 decoder (option; same codes) | 0.27x real time | | 1.69" in out.stdout
    assert "bf16 decoder audio SNR 43.1 dB" in out.stdout
    assert "| 80.0 steps/s | 20.0 | 4.0 (CPU time 4.1) | >= 1.5 | Test CPU" in out.stdout
    assert "weight matmuls alone run at 90.0 steps/s, 4.5x transformers" in out.stdout
    assert "| Dia decoding int8 weight-only (option, `clone --int8`) | 120.0 steps/s | | 6.0 (CPU time 6.1)" in out.stdout
    assert "int8: 1.5x the fp32 loop, each layer's output within 0.8 % of fp32's" in out.stdout
