"""Does a melody-conditioned music model follow the melody? Prints one JSON line.

    codeclm data synth-music data/music_synth_eval -n 8 --seed 99     # pieces the model never saw
    python benchmarks/melody_eval.py [--model FOLDER] [--manifest data/music_synth_eval/manifest.jsonl]

For the last ``n`` captioned clips of the manifest (pieces made with another seed than the
training corpus), each clip's first ``--seconds`` are the
melody reference and its caption the prompt. We generate with and without the melody (same seed)
and report how often the output's dominant pitch class per frame equals the reference's
(``chroma_agreement_melody`` vs ``chroma_agreement_text_only``; chance is about 1/12 = 0.083),
plus generation speed (``x_realtime``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from codeclm.audio import load_audio
from codeclm.data.manifest import read_manifest
from codeclm.lm.melody import SILENT, chroma_indices
from codeclm.pipelines import TextToMusic


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    keep = (a != SILENT) & (b != SILENT)
    return float((a[keep] == b[keep]).float().mean()) if keep.any() else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--manifest", default="data/music_synth_eval/manifest.jsonl")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = TextToMusic.from_pretrained(args.model)
    records = [r for r in read_manifest(args.manifest) if r.caption][-args.n:]
    frames = round(args.seconds * pipe.frame_rate)
    with_m, without, gen_s, audio_s = [], [], 0.0, 0.0
    for r in records:
        wav, _ = load_audio(r.path, pipe.sample_rate, 1, duration=args.seconds)
        ref = chroma_indices(wav, pipe.sample_rate, pipe.codec.hop_length, n_frames=frames)[0]
        t = time.perf_counter()
        out = pipe.generate([r.caption], duration=args.seconds, melody=wav, seed=args.seed)[0]
        gen_s += time.perf_counter() - t
        audio_s += args.seconds
        plain = pipe.generate([r.caption], duration=args.seconds, seed=args.seed)[0]
        with_m.append(agreement(ref, chroma_indices(out, pipe.sample_rate, pipe.codec.hop_length, n_frames=frames)[0]))
        without.append(agreement(ref, chroma_indices(plain, pipe.sample_rate, pipe.codec.hop_length,
                                                     n_frames=frames)[0]))
    print(json.dumps({"n": len(records), "seconds": args.seconds,
                      "chroma_agreement_melody": round(sum(with_m) / len(with_m), 4),
                      "chroma_agreement_text_only": round(sum(without) / len(without), 4),
                      "chance": round(1 / 12, 4), "x_realtime": round(audio_s / gen_s, 3),
                      "threads": torch.get_num_threads(), "model": args.model or "checkpoints/music"}))


if __name__ == "__main__":
    main()
