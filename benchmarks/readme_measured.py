"""Regenerate the speed part of README's "Measured" section from the benchmarks' JSON lines.

Each benchmark appends one JSON line per run to ``benchmarks/results/<name>.jsonl``
(``codec_speed``, ``frame_codec_speed``, ``lm_speed``, ``dac_speed``, ``dia_speed``, ``busy_cpu``);
this script takes the newest line of each and
renders a Markdown block, the machine it ran on beside the numbers:

    python benchmarks/readme_measured.py                 # print the block
    python benchmarks/readme_measured.py --write         # replace it in README.md

With ``--write`` the block goes between ``<!-- measured:speed:begin -->`` and
``<!-- measured:speed:end -->`` in README.md; if the markers are absent it is inserted (with
them) right after the "## Measured" heading's first line, or appended at the end. Nothing else
in the README changes, and a run with the same JSON lines gives the same text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- measured:speed:begin -->", "<!-- measured:speed:end -->"


def lines(name: str, folder: str) -> list[dict]:
    path = os.path.join(folder, f"{name}.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return out


def newest(name: str, folder: str) -> dict | None:
    found = lines(name, folder)
    return found[-1] if found else None


def newest_per_threads(name: str, folder: str) -> list[dict]:
    """The newest line of each thread count measured on the newest line's CPU, newest first."""
    found = lines(name, folder)
    if not found:
        return []
    cpu = (found[-1].get("machine") or {}).get("cpu")
    seen, out = set(), []
    for r in reversed(found):
        if (r.get("machine") or {}).get("cpu") == cpu and r.get("threads") not in seen:
            seen.add(r.get("threads"))
            out.append(r)
    return out


def machine(r: dict) -> str:
    m = r.get("machine") or {}
    if not m:
        return f"threads {r.get('threads', '?')}"
    load = f", load {m['load_1min']}" if m.get("load_1min") is not None else ""
    return (f"{m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs ({m.get('isa', '?')}), torch {m.get('torch', '?')}"
            f"{load}")


def fmt(v, suffix: str = "") -> str:
    return "n/a" if v is None else f"{v}{suffix}"


def render(folder: str) -> str:
    rows = ["| benchmark | codeclm | transformers | ratio | goal | machine |", "|---|---|---|---|---|---|"]
    notes = []
    runs = newest_per_threads("codec_speed", folder)
    c = runs[0] if runs else None
    for k, r in enumerate(runs):  # the newest run first, then the newest of each other thread count
        rows.append(f"| codec encode+decode, EnCodec 24 kHz, exact path ({r['threads']} threads) | "
                    f"{r['codeclm_x_realtime']}x real time | {r['transformers_x_realtime']}x | "
                    f"{r['speedup_vs_transformers']} (CPU time {fmt(r.get('speedup_vs_transformers_cpu'))}) | >= 1.5 | "
                    f"{machine(r) if k == 0 else 'same CPU, an earlier run'} |")
        if k == 0:
            rows.append(f"| codec, zero-padded variant (shipped-codec path) | {c.get('zero_pad_x_realtime')}x real time | | "
                        f"CPU time {fmt(c.get('zero_pad_speedup_vs_transformers_cpu'))} | >= 1.5 | same run |")
            rows.append(f"| streaming, 20 ms chunks, 1 thread | "
                        f"{fmt(c.get('streaming_20ms_x_realtime_1thread_cpu'))}x real time (CPU time; RTF wall "
                        f"{c['streaming_20ms_rtf_1thread']}) | - | - | >= 3x real time | same run |")
    if c:
        notes.append(f"codec: identical codes {c['identical_codes']}, max audio difference {c['max_abs_audio_diff']:.1e}, "
                     f"stream codes == offline {c.get('stream_codes_equal_offline')}, latency "
                     f"{c['algorithmic_latency_ms']} ms + start-up hold-back {c.get('start_delay_frames')} frames.")
        if "lstm_floor_seconds" in c:
            notes.append(f"codec LSTMs (CPU s, {c['lstm_steps']} steps): codeclm {c['codeclm_lstm_seconds']}, transformers "
                         f"{c['transformers_lstm_seconds']}, floor {c['lstm_floor_seconds']} (the bare per-step products: "
                         f"{c['lstm_weight_mb_per_step']} MB of recurrent weight read each step); with its LSTMs at that "
                         f"floor codeclm would be {c['max_speedup_vs_transformers']}x transformers.")
    f = newest("frame_codec_speed", folder)
    if f:
        what = "the shipped codec" if f.get("model", "").startswith(("checkpoints", "shipped")) else "frame codec"
        rows.append(f"| {what} ({f.get('model')}, {f.get('bandwidth_kbps')} kbps): offline / 20 ms streaming, "
                    f"{f.get('threads')} thread | {f.get('offline_x_realtime')}x / {f.get('streaming_20ms_x_realtime')}x "
                    f"real time (CPU time {fmt(f.get('offline_x_realtime_cpu'))}x / {fmt(f.get('streaming_20ms_x_realtime_cpu'))}x) "
                    f"| - | - | streaming >= 3x real time | {machine(f)} |")
        notes.append(f"frame codec: stream == offline {f.get('stream_equals_offline')}, GEMM kernels {f.get('kernels')}.")
    lm = newest("lm_speed", folder)
    if lm:
        cfg = lm.get("config", {})
        conf = f"dim {cfg.get('dim')}, {cfg.get('layers')} layers, {cfg.get('n_q')}x{cfg.get('card')}, CFG, {cfg.get('threads')} thread(s)"
        rows.append(f"| LM decoding fp32 ({conf}) | {lm['codeclm_steps_per_s']} steps/s | {lm['transformers_steps_per_s']} | "
                    f"{lm['speedup_vs_transformers']} (CPU time {lm['speedup_vs_transformers_cpu_time']}; fp32 matmul "
                    f"floor {lm['max_speedup_vs_transformers_cpu_time']}) | >= 2 | {machine(lm)} |")
        if "codeclm_int8_steps_per_s" in lm:
            rows.append(f"| LM decoding int8 weight-only (option) | {lm['codeclm_int8_steps_per_s']} steps/s | | "
                        f"{lm['int8_speedup_vs_transformers']} (CPU time {lm['int8_speedup_vs_transformers_cpu_time']}) | "
                        f">= 2 | same run |")
            notes.append(f"LM int8: token agreement with fp32 {lm['int8_token_agreement']}, first divergent frame "
                         f"{lm['int8_first_divergent_frame']}; fp32 tokens identical to transformers: {lm['same_codes']}.")
        for key in ("static", "compiled"):
            if f"codeclm_{key}_steps_per_s" in lm:
                rows.append(f"| LM decoding fp32, {key} | {lm[f'codeclm_{key}_steps_per_s']} steps/s | | "
                            f"{lm[f'{key}_speedup_vs_transformers']} | | same run |")
    d = newest("dac_speed", folder)
    if d:
        rows.append(f"| DAC encode+decode, 44.1 kHz layout ({d.get('parameters_M')} M, {d.get('threads')} thread(s)) | "
                    f"{d['codeclm_x_realtime']}x real time | {d['transformers_x_realtime']}x | "
                    f"{d['speedup_vs_transformers']} (decode only {fmt(d.get('decode_only_speedup'))}) | >= 1.5 | {machine(d)} |")
        if "bf16_decode_speedup_vs_transformers" in d:
            rows.append(f"| DAC with the bf16 decoder (option; same codes) | {d['bf16_decode_x_realtime']}x real time | | "
                        f"{d['bf16_decode_speedup_vs_transformers']} (CPU time "
                        f"{fmt(d.get('bf16_decode_speedup_vs_transformers_cpu'))}; decode only "
                        f"{fmt(d.get('bf16_decode_only_speedup'))}) | >= 1.5 | same run |")
            notes.append(f"DAC: identical codes {d.get('identical_codes')} (max audio difference "
                         f"{fmt(d.get('max_abs_audio_diff'))}); bf16 decoder audio SNR {d['bf16_decode_snr_db']} dB against fp32.")
    g = newest("dia_speed", folder)
    if g:
        cfg = g.get("config", {})
        rows.append(f"| Dia decoding (dim {cfg.get('dim')}, {cfg.get('layers')} layers, CFG, greedy, {g.get('threads')} thread(s)) | "
                    f"{g['codeclm_steps_per_s']} steps/s | {g['transformers_steps_per_s']} | {g['speedup']} (CPU time "
                    f"{fmt(g.get('speedup_cpu_time'))}) | >= 1.5 | {machine(g)} |")
        if "codeclm_int8_steps_per_s" in g:
            rows.append(f"| Dia decoding int8 weight-only (option, `clone --int8`) | {g['codeclm_int8_steps_per_s']} steps/s | | "
                        f"{g['int8_speedup']} (CPU time {fmt(g.get('int8_speedup_cpu_time'))}) | >= 1.5 | same run |")
        floor = (f"; the step's fp32 weight matmuls alone run at {g['matmul_floor_steps_per_cpu_s']} steps/s, "
                 f"{g['max_speedup_cpu_time']}x transformers" if "matmul_floor_steps_per_cpu_s" in g else "")
        int8 = (f"; int8: {g['int8_vs_fp32']}x the fp32 loop, each layer's output within "
                f"{round(100 * g['int8_linear_rel_err'], 1)} % of fp32's (tokens differ)" if "int8_vs_fp32" in g else "")
        notes.append(f"Dia: identical tokens {g.get('same_tokens')} over {g.get('steps')} steps{floor}{int8}.")
    b = newest("busy_cpu", folder)
    if b:
        rows.append(f"| next to a busy core: {b['job']} | {b['busy_seconds']} s ({b['busy_threads']} thread(s)) vs "
                    f"{b['alone_seconds']} s alone | torch's threads: {b['torch_default_busy_seconds']} s | slowdown "
                    f"{b['slowdown']} (torch's threads {b['torch_default_slowdown']}) | <= 1.3 | {machine(b)} |")
        if "slowdown_floor" in b:
            notes.append(f"busy core: the job alone on the {b['free_cpus']} CPU(s) left takes {b['alone_on_free_cpus_seconds']} s, "
                         f"so no thread choice can bring the slowdown below {b['slowdown_floor']}; the default's busy run "
                         f"is {b['busy_vs_floor']}x that floor.")
    if len(rows) == 2:
        return ""
    text = ["Speed (regenerated by `python benchmarks/readme_measured.py --write` from `benchmarks/results/*.jsonl`):",
            "", *rows]
    if notes:
        text += ["", *[f"- {n}" for n in notes]]
    return "\n".join(text)


def write(readme: str, block: str) -> None:
    with open(readme) as f:
        text = f.read()
    wrapped = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda m: wrapped, text, flags=re.S)
    else:
        m = re.search(r"^## Measured.*$", text, flags=re.M)
        if m:
            text = text[: m.end()] + "\n\n" + wrapped + "\n" + text[m.end():]
        else:
            text = text.rstrip("\n") + "\n\n" + wrapped + "\n"
    tmp = readme + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results"), help="folder of the benchmarks' .jsonl files")
    ap.add_argument("--readme", default=os.path.join(os.path.dirname(HERE), "README.md"))
    ap.add_argument("--write", action="store_true", help="replace the block in README.md instead of printing it")
    args = ap.parse_args()
    block = render(args.results)
    if not block:
        sys.exit(f"no benchmark results in {args.results} (run benchmarks/codec_speed.py, frame_codec_speed.py, lm_speed.py, dac_speed.py, dia_speed.py, busy_cpu.py)")
    if args.write:
        write(args.readme, block)
    else:
        print(block)


if __name__ == "__main__":
    main()
