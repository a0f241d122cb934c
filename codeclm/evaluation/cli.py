"""The ``codeclm eval`` command group.

``codeclm eval codec``: objective metrics of a codec at several bandwidths, optionally against
Opus at the same bitrates; one JSON line per (system, bandwidth) on stdout::

    codeclm eval codec data/heldout.jsonl --bandwidths 1.5 3 6 12 --opus -o results.jsonl

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
    from codeclm.codec import Codec
    from codeclm.evaluation.codec_eval import collect_inputs, evaluate_codec
    from codeclm.fileio import atomic_output

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise CodecLMError(f"{args.output}: folder {Path(args.output).parent} does not exist")
    codec = Codec.from_pretrained(args.model)
    items = collect_inputs(args.input, max_files=args.max_files)
    bandwidths = args.bandwidths if args.bandwidths else codec.config.target_bandwidths
    rows = evaluate_codec(codec, items, bandwidths, metrics=args.metrics, opus=args.opus,
                          seconds=args.seconds, progress=not args.quiet)
    lines = [json.dumps(row) for row in rows]
    for line in lines:
        print(line, flush=True)
    if args.output:
        with atomic_output(args.output) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return 0


def add_eval_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` with the subcommand ``codec``; returns the ``eval`` parser."""
    group = subparsers.add_parser("eval", help="objective evaluation (codec metrics vs bandwidth, Opus)")
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
    return group
