"""The ``codeclm eval`` command group.

``codeclm eval codec``: objective metrics of a codec at several bandwidths, optionally against
Opus at the same bitrates; one JSON line per (system, bandwidth) on stdout::

    codeclm eval codec data/heldout.jsonl --bandwidths 1.5 3 6 12 --opus -o results.jsonl

``codeclm eval clone``: zero-shot voice cloning (WER with pocketsphinx, speaker similarity with
Resemblyzer, real-time factor) of a ``VoiceClone`` model on a JSON-lines file of pairs::

    codeclm eval clone --model runs/clone/model pairs.jsonl --json

The top-level CLI calls :func:`add_eval_commands` on its subparsers. Handlers return an exit
code and raise :class:`~codeclm.errors.CodecLMError` on bad input (printed as one line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codeclm.errors import CodecLMError

__all__ = ["add_eval_commands"]


def _eval_codec(args: argparse.Namespace) -> int:
    from codeclm.codec import load_model
    from codeclm.evaluation.codec_eval import collect_inputs, evaluate_codec
    from codeclm.fileio import atomic_output

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise CodecLMError(f"{args.output}: folder {Path(args.output).parent} does not exist")
    codec = load_model(args.model)
    items = collect_inputs(args.input, max_files=args.max_files)
    bandwidths = args.bandwidths if args.bandwidths else codec.target_bandwidths
    rows = evaluate_codec(codec, items, bandwidths, metrics=args.metrics, opus=args.opus,
                          seconds=args.seconds, progress=not args.quiet)
    lines = [json.dumps(row) for row in rows]
    for line in lines:
        print(line, flush=True)
    if args.output:
        with atomic_output(args.output) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return 0


def _eval_clone(args: argparse.Namespace) -> int:
    from codeclm.evaluation.clone_eval import check_dependencies, evaluate_clone, read_pairs

    pairs = read_pairs(args.pairs)  # bad input fails before any model is loaded
    check_dependencies()
    try:
        from codeclm.pipelines.clone import VoiceClone
    except ModuleNotFoundError as exc:
        if exc.name and "codeclm.pipelines.clone".startswith(exc.name):
            raise CodecLMError("the voice cloning pipeline (codeclm.pipelines.clone) is not part of this install") from None
        raise
    pipe = VoiceClone.from_pretrained(args.model)
    result = evaluate_clone(pipe, pairs, seed=args.seed, progress=not args.quiet, details=args.details)
    if args.json:
        print(json.dumps(result), flush=True)
        return 0
    items = result.pop("items", [])
    for it in items:
        print(f"{Path(it['ref']).name}: wer {it.get('wer')} sim_own {it['sim_own']} | {it['text']} -> {it.get('hyp')}")
    print("  ".join(f"{k} {v}" for k, v in result.items()), flush=True)
    return 0


def add_eval_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` with the subcommands ``codec`` and ``clone``; returns the ``eval`` parser."""
    group = subparsers.add_parser("eval", help="objective evaluation (codec metrics vs bandwidth, Opus; voice cloning)")
    sub = group.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("codec", help="codec metrics at several bandwidths, optionally against Opus",
                       description="Encode/decode every file at each bandwidth and print one JSON line per "
                                   "(system, bandwidth) with the mean metrics and achieved bitrate.")
    p.add_argument("input", help="folder of audio files, manifest (.jsonl) or one audio file")
    p.add_argument("--model", default=None, help="codec folder (default: the shipped checkpoints/codec)")
    p.add_argument("-b", "--bandwidths", type=float, nargs="+", default=None, metavar="KBPS",
                   help="bandwidths in kbps (default: the model's target bandwidths)")
    p.add_argument("--opus", action="store_true", help="also run Opus (ffmpeg/libopus) at the same bitrates")
    p.add_argument("--max-files", type=int, default=None, help="evaluate only the first N files")
    p.add_argument("--seconds", type=float, default=None, help="crop each file to its first S seconds")
    p.add_argument("--metrics", nargs="+", default=None, choices=["si_sdr", "mel", "stft", "pesq", "stoi"],
                   help="metrics to compute (default: si_sdr mel stft, plus pesq stoi when every record "
                        "has a transcript)")
    p.add_argument("-o", "--output", default=None, help="also write the JSON lines to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_codec)

    p = sub.add_parser("clone", help="voice cloning: WER, speaker similarity, real-time factor",
                       description="Clone each pair's reference voice saying its text, then print the corpus "
                                   "WER (pocketsphinx; ref_wer: the same ASR on the references), speaker "
                                   "similarity to the own and to the other references (Resemblyzer) and the "
                                   "real-time factor.")
    p.add_argument("pairs", help="JSON-lines file: ref (audio, relative to the file), text, and optionally "
                                 "ref_text, language (default en), speaker")
    p.add_argument("--model", default=None, help="voice cloning model folder (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every pair (default 0)")
    p.add_argument("--json", action="store_true", help="one JSON line instead of text")
    p.add_argument("--details", action="store_true", help="also per-pair results (transcript, WER, similarity)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_clone)
    return group
