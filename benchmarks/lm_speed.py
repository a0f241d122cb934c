"""Token-LM generation speed: codeclm's KV-cached loop vs transformers' MusicGen ``generate``.

One random MusicGen (same seed, same weights in both), greedy decoding with classifier-free
guidance (batch 2B, as MusicGen runs), only the LM steps timed (audio decoding stubbed out in
transformers, not run in codeclm). Each implementation runs in its own subprocess so their
memory peaks are measured separately. Prints one JSON line::

    python benchmarks/lm_speed.py [--steps 200] [--dim 512] [--layers 8] [--threads 1] [--repeats 3] [--no-compile]

codeclm runs three ways: the default streaming decoder, ``static=True`` (fixed-shape cache, eager)
and ``compile=True`` (the static step through ``torch.compile``); each is warmed up on a run of
the same length bucket first (for ``compile`` that run includes the compilation:
``compile_seconds``), then timed ``--repeats`` times, the fastest run counting (the same for
transformers). ``*_same_codes``: the variant produced exactly the codes of the reference
(transformers for the default decoder, the default decoder for the others).

The machine may be shared: ``*_cpu_time`` ratios use the process CPU time (one thread) instead of
the wall clock, which other processes' load inflates. ``matmul_floor_steps_per_s``: the weight
matmuls of a step alone, run back to back (a bound for any fp32 implementation; at small batch
the step reads every weight once, so the bound is memory traffic); ``max_speedup_vs_transformers_cpu_time``
is that bound over transformers' CPU-time rate.

``late_step_cost_ratio``: median cost of the last 5 steps / of steps 10-14 in codeclm (1.0 means
a step costs the same however long the sequence is: the preallocated KV cache).
``*_peak_mem_mb``: peak RSS during generation (VmHWM reset before it) minus RSS before it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import torch
from timing import matmul_floor_seconds, write_result  # this folder is on sys.path when run as a script

IMPLS = ("codeclm", "codeclm-static", "codeclm-compiled", "codeclm-int8", "transformers")

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so the peak covers generation only (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _maxrss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args):
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(0)
    card = args.card
    t5 = T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4)
    enc = EncodecConfig(num_filters=8, hidden_size=32, upsampling_ratios=[4, 4, 2], codebook_size=card,
                        target_bandwidths=[args.n_q * 750 * (card.bit_length() - 1) / 1000])
    dec = MusicgenDecoderConfig(vocab_size=card, hidden_size=args.dim, num_hidden_layers=args.layers,
                                num_attention_heads=args.heads, ffn_dim=4 * args.dim, num_codebooks=args.n_q,
                                max_position_embeddings=max(2048, args.steps + 8),
                                pad_token_id=card, bos_token_id=card, decoder_start_token_id=card)
    model = MusicgenForConditionalGeneration(
        MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(), decoder=dec.to_dict())).eval()
    gc = model.generation_config
    gc.pad_token_id = gc.bos_token_id = gc.decoder_start_token_id = card
    gc.do_sample = False
    input_ids = torch.randint(2, 100, (args.batch, 12), generator=torch.Generator().manual_seed(1))
    return model, input_ids


def _matmul_floor(lm, rows: int, steps: int, repeats: int) -> float:
    """CPU seconds of the weight matmuls alone for ``steps`` steps (every linear layer of a step,
    heads included, on ``rows`` rows; the cross-attention keys/values are computed once): a lower
    bound on the step cost of any fp32 implementation of this model."""
    weights = [m.weight for name, m in lm.named_modules()
               if isinstance(m, torch.nn.Linear) and "cross.kv" not in name and name != "cond_proj"]
    return matmul_floor_seconds(weights, rows, steps, repeats)


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    model, input_ids = build(args)
    mask = torch.ones_like(input_ids)
    stamps: list[float] = []  # per-step times (codeclm's on_step)
    if args.impl == "transformers":
        captured = {}

        def stub(codes, *a, **k):  # skip audio decoding: time the LM only
            captured["codes"] = codes[0]
            return SimpleNamespace(audio_values=codes)

        model.audio_encoder.decode = stub

        def run(steps):
            model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                           guidance_scale=args.cfg, max_new_tokens=steps)
            return captured["codes"]
    else:
        from codeclm.lm.generate import generate_codes
        from codeclm.lm.hf import lm_from_hf

        lm = lm_from_hf(model)
        if args.impl == "codeclm-int8":
            from codeclm.lm.quant import quantize_int8

            lm = quantize_int8(lm)
        with torch.no_grad():
            states = model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        del model
        pattern = lm.config.get_pattern()
        mode = {"static": args.impl == "codeclm-static", "compile": args.impl == "codeclm-compiled"}

        def run(steps):
            stamps.clear()
            return generate_codes(lm, pattern, input_ids.shape[0], pattern.frames_for_steps(steps), states,
                                  mask.bool(), guidance_scale=args.cfg, do_sample=False,
                                  on_step=lambda done, total: stamps.append(time.perf_counter()), **mode)

    # warm-up; the static variants on a run of the same 64-step length bucket (the shapes they compile for)
    warm = 12 if args.impl in ("codeclm", "transformers") else max(12, (args.steps - 1) // 64 * 64 + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        t0 = time.perf_counter()
        run(warm)
        warm_s = time.perf_counter() - t0
    out = {}
    if args.impl == "codeclm-compiled":
        out["compile_seconds"] = warm_s
        out["compile_fell_back"] = any("torch.compile" in str(w.message) for w in caught)
    peak, best, best_cpu, costs = 0.0, None, None, []
    for _ in range(args.repeats):
        _reset_peak()
        before = _rss_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        codes = run(args.steps)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = max(peak, _maxrss_mb() - before)
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        if best is None or elapsed < best:
            best = elapsed
            costs = [b - a for a, b in itertools.pairwise(stamps)]
    if args.impl == "codeclm":
        out["floor_steps_per_s"] = args.steps / _matmul_floor(lm, 2 * input_ids.shape[0] if args.cfg != 1 else
                                                              input_ids.shape[0], args.steps, args.repeats)
    if args.impl == "codeclm-int8" or args.impl == "codeclm":
        out["codes"] = codes.tolist()  # token agreement of int8 vs fp32
    out.update({"steps_per_s": args.steps / best, "cpu_steps_per_s": args.steps / best_cpu, "seconds": best,
                "peak_mem_mb": max(0.0, peak),
                "codes_sha": hashlib.sha256(codes.contiguous().numpy().tobytes()).hexdigest()[:16]})
    if len(costs) > 20:
        out["late_step_cost_ratio"] = statistics.median(costs[-5:]) / statistics.median(costs[9:14])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--n-q", type=int, default=4)
    ap.add_argument("--card", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (the fastest counts)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 weight-only variant (codeclm.lm.quant)")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "lm_speed.jsonl"),
                    help="JSON-lines file the result line is appended to ('' for none)")
    ap.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return
    torch.set_num_threads(args.threads)
    results = {}
    for impl in IMPLS:
        if (impl == "codeclm-compiled" and args.no_compile) or (impl == "codeclm-int8" and args.no_int8):
            continue
        cmd = [sys.executable, __file__, "--impl", impl] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("impl", "no_compile", "no_int8", "results")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode:
            sys.exit(f"{impl} worker failed:\n{proc.stderr[-2000:]}")
        results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, theirs = results["codeclm"], results["transformers"]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from codeclm.threads import machine_info

    out = {
        "benchmark": "lm_speed",
        "machine": machine_info(),
        "config": {"dim": args.dim, "layers": args.layers, "heads": args.heads, "n_q": args.n_q, "card": args.card,
                   "batch": args.batch, "cfg": args.cfg, "steps": args.steps, "threads": args.threads},
        "codeclm_steps_per_s": round(ours["steps_per_s"], 1),
        "transformers_steps_per_s": round(theirs["steps_per_s"], 1),
        "speedup_vs_transformers": round(ours["steps_per_s"] / theirs["steps_per_s"], 2),
        "speedup_vs_transformers_cpu_time": round(ours["cpu_steps_per_s"] / theirs["cpu_steps_per_s"], 2),
        "matmul_floor_steps_per_s": round(ours["floor_steps_per_s"], 1),
        "max_speedup_vs_transformers_cpu_time": round(ours["floor_steps_per_s"] / theirs["cpu_steps_per_s"], 2),
        "late_step_cost_ratio": round(ours.get("late_step_cost_ratio", float("nan")), 2),
        "codeclm_peak_mem_mb": round(ours["peak_mem_mb"], 1),
        "transformers_peak_mem_mb": round(theirs["peak_mem_mb"], 1),
        "same_codes": ours["codes_sha"] == theirs["codes_sha"],
    }
    for impl, key in (("codeclm-static", "static"), ("codeclm-compiled", "compiled")):
        if impl not in results:
            continue
        r = results[impl]
        out.update({
            f"codeclm_{key}_steps_per_s": round(r["steps_per_s"], 1),
            f"{key}_speedup_vs_transformers": round(r["steps_per_s"] / theirs["steps_per_s"], 2),
            f"{key}_speedup_vs_transformers_cpu_time": round(r["cpu_steps_per_s"] / theirs["cpu_steps_per_s"], 2),
            f"{key}_vs_eager": round(r["steps_per_s"] / ours["steps_per_s"], 2),
            f"{key}_late_step_cost_ratio": round(r.get("late_step_cost_ratio", float("nan")), 2),
            f"codeclm_{key}_peak_mem_mb": round(r["peak_mem_mb"], 1),
            f"{key}_same_codes": r["codes_sha"] == ours["codes_sha"],
        })
        if "compile_seconds" in r:
            out["compile_seconds"] = round(r["compile_seconds"], 1)
            out["compile_fell_back"] = r["compile_fell_back"]
    if "codeclm-int8" in results:
        r = results["codeclm-int8"]
        a, b = torch.tensor(r["codes"]), torch.tensor(ours["codes"])
        diverge = (a != b).flatten(0, 1).any(0).nonzero()
        out.update({
            "codeclm_int8_steps_per_s": round(r["steps_per_s"], 1),
            "int8_speedup_vs_transformers": round(r["steps_per_s"] / theirs["steps_per_s"], 2),
            "int8_speedup_vs_transformers_cpu_time": round(r["cpu_steps_per_s"] / theirs["cpu_steps_per_s"], 2),
            "int8_vs_fp32": round(r["steps_per_s"] / ours["steps_per_s"], 2),
            "int8_token_agreement": round(float((a == b).float().mean()), 4),
            "int8_first_divergent_frame": int(diverge[0]) if len(diverge) else None,
        })
    write_result(out, args.results)


if __name__ == "__main__":
    main()
