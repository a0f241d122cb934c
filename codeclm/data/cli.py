"""The ``codeclm data`` command group: build manifests from folders, synthesis and Debian packages,
and encode a manifest into a token cache (``tokenize``).

Wire it into the main parser with::

    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args(); sys.exit(args.func(args))

Every handler returns an exit code: 0 on success, 1 after printing a one-line
``codeclm data: error: ...`` for a :class:`CodecLMError`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable

from codeclm.errors import CodecLMError

__all__ = ["add_data_commands"]


def _handler(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CodecLMError as exc:
            print(f"codeclm data: error: {exc}", file=sys.stderr)
            return 1
    return run


@_handler
def _scan(args: argparse.Namespace) -> int:
    from codeclm.data.manifest import scan_folder, write_manifest

    result = scan_folder(args.dir, sidecar=not args.no_sidecar, skip_errors=args.skip_errors)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_manifest(result.records, args.output)
    print(f"{args.output}: {result.summary()}")
    return 0


@_handler
def _synth_speech(args: argparse.Namespace) -> int:
    from codeclm.data.synth_speech import synth_speech

    if args.engine == "flite":
        from codeclm.data.synth_speech import synth_flite

        records = synth_flite(args.out_dir, args.n, seed=args.seed)
    else:
        records = synth_speech(args.out_dir, args.n, languages=tuple(args.languages), seed=args.seed)
    speakers = len({r.speaker for r in records})
    print(f"{Path(args.out_dir) / 'manifest.jsonl'}: {len(records)} utterances, {speakers} speakers, "
          f"{sum(r.duration for r in records) / 60:.1f} min")
    return 0


@_handler
def _synth_music(args: argparse.Namespace) -> int:
    from codeclm.data.synth_music import synth_music

    records = synth_music(args.out_dir, args.n, duration=args.duration, seed=args.seed,
                          soundfont=args.soundfont, sample_rate=args.sample_rate)
    print(f"{Path(args.out_dir) / 'manifest.jsonl'}: {len(records)} pieces, "
          f"{sum(r.duration for r in records) / 60:.1f} min")
    return 0


def _real(source: str) -> Callable[[argparse.Namespace], int]:
    @_handler
    def run(args: argparse.Namespace) -> int:
        from codeclm.data import real

        records = {"speech": real.asterisk_speech, "music": real.wesnoth_music,
                   "speech-other": real.asterisk_other_speech, "klettres": real.klettres_speech}[source]()
        real.write_split_manifests(records, args.out_dir, fraction=args.held_out)
        train, held = real.split_held_out(records, args.held_out)
        print(f"{args.out_dir}: manifest.jsonl ({len(records)}), train.jsonl ({len(train)}), "
              f"heldout.jsonl ({len(held)})")
        return 0
    return run


@_handler
def _tokenize(args: argparse.Namespace) -> int:
    from codeclm.codec import load_model
    from codeclm.data.tokens import tokenize_corpus

    if args.shard_frames <= 0:
        raise CodecLMError(f"--shard-frames must be positive, got {args.shard_frames}")
    codec = load_model(args.codec)
    result = tokenize_corpus(args.manifest, codec, args.output, bandwidth=args.bandwidth,
                             shard_frames=args.shard_frames, resume=not args.overwrite,
                             progress=not args.quiet, fail_on_error=args.fail_on_error,
                             chroma=args.chroma)
    print(result.summary())
    for _, message in result.errors:
        print(f"codeclm data: skipped: {message}", file=sys.stderr)
    return 0


MAX_REPEAT = 100_000


@_handler
def _merge(args: argparse.Namespace) -> int:
    """Concatenate manifests; ``a.jsonl*3`` repeats a manifest three times (to weight a corpus).

    Records stream from the inputs to the output (each repeat reads its manifest again), so
    memory does not grow with the repeat counts or the manifests' sizes."""
    from codeclm.data.manifest import iter_manifest, write_manifest

    specs = []
    for spec in args.inputs:
        path, _, times = spec.partition("*")
        if times and not times.isdigit():
            raise CodecLMError(f"{spec}: repeat count after '*' must be a whole number")
        if times and not 1 <= int(times) <= MAX_REPEAT:
            raise CodecLMError(f"{spec}: repeat count must be in 1..{MAX_REPEAT}")
        next(iter_manifest(path), None)  # a missing or malformed first line fails before writing
        specs.append((path, int(times or 1)))
    count = 0

    def records():
        nonlocal count
        for path, times in specs:
            for _ in range(times):
                for rec in iter_manifest(path):
                    count += 1
                    yield rec

    write_manifest(records(), args.output)
    print(f"{args.output}: {count} records from {len(args.inputs)} manifests", file=sys.stderr)
    return 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` with subcommands scan, synth-speech, synth-music, real-speech, real-music, tokenize.

    Each subcommand sets ``func`` to a handler taking the parsed args and returning an exit code.
    Returns the ``data`` parser (others may add subcommands to ``parser.subcommands``).
    """
    data = subparsers.add_parser("data", help="build audio manifests (scan, synthesize, packaged recordings)")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    data.subcommands = sub  # so other modules (e.g. tokenize) can add to the group

    p = sub.add_parser("scan", help="write a manifest of the audio files below a folder")
    p.add_argument("dir", help="folder to scan recursively (.wav .flac .ogg .mp3)")
    p.add_argument("-o", "--output", required=True, help="manifest to write (JSON lines)")
    p.add_argument("--skip-errors", action="store_true", help="skip unreadable files instead of failing")
    p.add_argument("--no-sidecar", action="store_true", help="ignore name.txt / name.caption.txt files")
    p.set_defaults(func=_scan)

    p = sub.add_parser("synth-speech", help="speak generated sentences with espeak-ng")
    p.add_argument("out_dir")
    p.add_argument("-n", type=int, required=True, help="number of utterances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--languages", nargs="+", default=["en-us", "en-gb"],
                   help="language codes (en-us en-gb de fr es it)")
    p.add_argument("--engine", choices=["espeak-ng", "flite"], default="espeak-ng",
                   help="synthesizer: espeak-ng (many voices and languages) or flite (English voices kal16, awb, rms, slt)")
    p.set_defaults(func=_synth_speech)

    p = sub.add_parser("synth-music", help="render generated MIDI pieces with fluidsynth, with captions")
    p.add_argument("out_dir")
    p.add_argument("-n", type=int, required=True, help="number of pieces")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per piece (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soundfont", default=None, help="a .sf2 file (default: an installed GM soundfont)")
    p.add_argument("--sample-rate", type=int, default=24000)
    p.set_defaults(func=_synth_music)

    for name, source, what in (("real-speech", "speech", "Asterisk English prompts (asterisk-core-sounds-en-wav)"),
                               ("real-music", "music", "Wesnoth soundtrack (wesnoth-1.16-music)"),
                               ("real-speech-other", "speech-other",
                                "Asterisk Spanish/Italian/Russian prompts (asterisk-core-sounds-{es,it,ru}-wav)"),
                               ("real-klettres", "klettres", "klettres letters and syllables (klettres-data)")):
        p = sub.add_parser(name, help=f"manifests of the {what}, split into train/held-out")
        p.add_argument("out_dir")
        p.add_argument("--held-out", type=float, default=0.1, help="share held out by file-name hash")
        p.set_defaults(func=_real(source))

    p = sub.add_parser("merge", help="concatenate manifests (MANIFEST*N repeats one N times to weight it)")
    p.add_argument("inputs", nargs="+", metavar="MANIFEST[*N]")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_merge)

    p = sub.add_parser("tokenize", help="encode a manifest with the codec into a sharded token cache",
                       description="Encode every record once into shard_*.safetensors + index.jsonl + meta.json; "
                                   "rerunning resumes where a killed run stopped.")
    p.add_argument("manifest", help="manifest to encode (JSON lines)")
    p.add_argument("-o", "--output", required=True, help="cache folder")
    p.add_argument("--codec", default=None, help="codec folder (default: the shipped checkpoints/codec)")
    p.add_argument("-b", "--bandwidth", type=float, default=None, help="kbps (default: all codebooks)")
    p.add_argument("--shard-frames", type=int, default=1 << 20, help="frames per shard (default 1048576)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing cache instead of resuming it")
    p.add_argument("--fail-on-error", action="store_true", help="stop at the first unreadable audio file")
    p.add_argument("--chroma", action="store_true",
                   help="also store each frame's dominant pitch class (for melody-conditioned music LMs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_tokenize)
    return data
