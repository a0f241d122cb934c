"""Token-LM generation speed: codeclm's KV-cached loop vs transformers' MusicGen ``generate``.

One random MusicGen (same seed, same weights in both), greedy decoding with classifier-free
guidance (batch 2B, as MusicGen runs), only the LM steps timed (audio decoding stubbed out in
transformers, not run in codeclm). Each implementation runs in its own subprocess so their
memory peaks are measured separately. Prints one JSON line::

    python benchmarks/lm_speed.py [--steps 200] [--dim 512] [--layers 8] [--threads 1]

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
from types import SimpleNamespace

import torch


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


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    model, input_ids = build(args)
    mask = torch.ones_like(input_ids)
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
        with torch.no_grad():
            states = model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        del model
        pattern = lm.config.get_pattern()
        stamps: list[float] = []

        def run(steps):
            stamps.clear()
            return generate_codes(lm, pattern, input_ids.shape[0], pattern.frames_for_steps(steps), states,
                                  mask.bool(), guidance_scale=args.cfg, do_sample=False,
                                  on_step=lambda done, total: stamps.append(time.perf_counter()))

    run(12)  # warm-up
    _reset_peak()
    before = _rss_mb()
    t0 = time.perf_counter()
    codes = run(args.steps)
    elapsed = time.perf_counter() - t0
    out = {"steps_per_s": args.steps / elapsed, "seconds": elapsed,
           "peak_mem_mb": max(0.0, _maxrss_mb() - before),
           "codes_sha": hashlib.sha256(codes.contiguous().numpy().tobytes()).hexdigest()[:16]}
    if args.impl == "codeclm" and len(stamps) > 20:
        costs = [b - a for a, b in itertools.pairwise(stamps)]
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
    ap.add_argument("--impl", choices=["codeclm", "transformers"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return
    results = {}
    for impl in ("codeclm", "transformers"):
        cmd = [sys.executable, __file__, "--impl", impl] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "impl"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode:
            sys.exit(f"{impl} worker failed:\n{proc.stderr[-2000:]}")
        results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, theirs = results["codeclm"], results["transformers"]
    print(json.dumps({
        "config": {"dim": args.dim, "layers": args.layers, "heads": args.heads, "n_q": args.n_q, "card": args.card,
                   "batch": args.batch, "cfg": args.cfg, "steps": args.steps, "threads": args.threads},
        "codeclm_steps_per_s": round(ours["steps_per_s"], 1),
        "transformers_steps_per_s": round(theirs["steps_per_s"], 1),
        "speedup_vs_transformers": round(ours["steps_per_s"] / theirs["steps_per_s"], 2),
        "late_step_cost_ratio": round(ours.get("late_step_cost_ratio", float("nan")), 2),
        "codeclm_peak_mem_mb": round(ours["peak_mem_mb"], 1),
        "transformers_peak_mem_mb": round(theirs["peak_mem_mb"], 1),
        "same_codes": ours["codes_sha"] == theirs["codes_sha"],
    }))


if __name__ == "__main__":
    main()
