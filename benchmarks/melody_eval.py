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

import torch

from codeclm.audio import load_audio
from codeclm.data.manifest import read_manifest
from codeclm.evaluation.music_eval import melody_following, pitch_class_agreement
from codeclm.pipelines import TextToMusic

agreement = pitch_class_agreement  # the measure (codeclm.evaluation.music_eval), under its old name


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
    items = [(r.caption, load_audio(r.path, pipe.sample_rate, 1, duration=args.seconds)[0]) for r in records]
    res = melody_following(pipe, items, args.seconds, seed=args.seed)
    print(json.dumps({"n": len(records), "seconds": args.seconds,
                      "chroma_agreement_melody": round(sum(res["with"]) / len(res["with"]), 4),
                      "chroma_agreement_text_only": round(sum(res["without"]) / len(res["without"]), 4),
                      "chance": round(1 / 12, 4), "x_realtime": round(res["audio_s"] / res["gen_s"], 3),
                      "threads": torch.get_num_threads(), "model": args.model or "checkpoints/music"}))


if __name__ == "__main__":
    main()
