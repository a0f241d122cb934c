"""Does a codec keep a piece's mode? Major/minor of held-out music renders through codecs, one JSON line.

    apt-get install fluidsynth timgm6mb-soundfont
    python benchmarks/codec_tonality.py checkpoints/codec checkpoints/codec_v1 [--n-mode 12] [--bandwidth 3]

The major/minor pairs of ``benchmarks/music_adherence.py`` (synth-music seed 1717 pieces whose
captions are not in the training corpus, each planned once in major and once in minor), rendered
by fluidsynth, are scored by the same key-profile estimator
(``codeclm.evaluation.music_eval.estimate_key``, mode given the piece's tonic) as rendered and after
a round trip through each codec folder at ``--bandwidth``. That round trip is the ceiling of a
music model on the codec's tokens (issue 17's mode goal: 0.8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import music_adherence as ma  # noqa: E402  (this folder is on sys.path when run as a script)
from timing import write_result  # noqa: E402

from codeclm.codec import load_model  # noqa: E402
from codeclm.evaluation import music_eval as me  # noqa: E402
from codeclm.evaluation.codec_eval import roundtrip  # noqa: E402
from codeclm.threads import machine_info, set_threads  # noqa: E402


def mode_accuracy(cases: list, waves: list[torch.Tensor]) -> float:
    keys = [me.estimate_key(w, me.EVAL_SR) for w in waves]
    return round(sum(k.mode_given_tonic(p.tonic) == m for k, (p, m) in zip(keys, cases)) / max(1, len(waves)), 4)


def round_trip(codec, wav: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``wav [C, N]`` at the evaluation rate (24 kHz) through ``codec`` (mono, its own rate)."""
    x = wav.mean(0, keepdim=True) if wav.dim() == 2 else wav[None]
    if codec.sample_rate != me.EVAL_SR:
        raise SystemExit(f"error: codec_tonality: the codec runs at {codec.sample_rate} Hz, the renders at {me.EVAL_SR}")
    return roundtrip(codec, x, bandwidth)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("codecs", nargs="+", help="codec folders")
    p.add_argument("--n-mode", type=int, default=12, help="base pieces (each rendered in major and minor)")
    p.add_argument("--bandwidth", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "codec_tonality.jsonl"))
    args = p.parse_args(argv)
    if shutil.which("fluidsynth") is None:
        print("error: codec_tonality needs fluidsynth (apt-get install fluidsynth timgm6mb-soundfont)", file=sys.stderr)
        return 1
    set_threads(args.threads)
    t0 = time.perf_counter()
    plan = ma.parse_args(["--n-tempo", "0", "--n-instrument", "0", "--n-mode", str(args.n_mode),
                          "--duration", str(args.duration)])  # music_adherence's held-out plan, mode pairs only
    cases, _ = ma.build_cases(plan, me.training_captions(plan.train_corpus))
    cases = cases["mode"]
    with tempfile.TemporaryDirectory() as d:
        rendered = [me.render_piece(c[0], args.duration, plan.heldout_seed, d, f"m{i}") for i, c in enumerate(cases)]
    out = {"benchmark": "codec_tonality", "machine": machine_info(), "clips": len(rendered),
           "bandwidth_kbps": args.bandwidth, "renders": mode_accuracy(cases, rendered), "codecs": {}}
    for folder in args.codecs:
        codec = load_model(folder).eval()
        out["codecs"][folder] = mode_accuracy(cases, [round_trip(codec, w, args.bandwidth) for w in rendered])
    out["goal_mode_accuracy"] = 0.8
    out["seconds"] = round(time.perf_counter() - t0, 1)
    write_result(out, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
