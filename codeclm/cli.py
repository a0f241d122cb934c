"""The ``codeclm`` console script: one argparse front door for every job.

Each command group lives beside the code it drives (``codeclm/compression/cli.py``,
``codeclm/data/cli.py``, ...) and registers itself here. Every failure that codeclm anticipates
is a :class:`~codeclm.errors.CodecLMError`: it is printed as one line and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys

from codeclm import __version__
from codeclm.errors import CodecLMError


def _roundtrip(args: argparse.Namespace) -> int:
    """Encode and decode a file through the codec (hear what a bandwidth sounds like)."""
    import torch

    from codeclm.audio import load_audio, save_audio
    from codeclm.codec import load_model

    codec = load_model(args.model)
    wav, _ = load_audio(args.input, codec.sample_rate, codec.channels)
    with torch.inference_mode():
        codes = codec.encode(wav[None], bandwidth=args.bandwidth)
        audio = codec.decode(codes)[0, :, : wav.shape[-1]]
    save_audio(args.output, audio, codec.sample_rate)
    kbps = codec.bandwidth_of(codes.shape[1])
    print(f"{args.input} -> {args.output}: {codes.shape[1]} codebooks x {codes.shape[-1]} frames "
          f"({kbps:g} kbps raw) at {codec.sample_rate} Hz", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeclm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"codeclm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rt = sub.add_parser("roundtrip", help="encode + decode an audio file through the codec")
    rt.add_argument("input")
    rt.add_argument("output")
    rt.add_argument("--bandwidth", "-b", type=float, default=None, help="kbps (default: the model's highest)")
    rt.add_argument("--model", default=None, help="codec folder (default: the shipped checkpoints/codec)")
    rt.set_defaults(func=_roundtrip)

    for module, hook in (("codeclm.compression.cli", "add_compression_commands"),
                         ("codeclm.data.cli", "add_data_commands"),
                         ("codeclm.evaluation.cli", "add_eval_commands"),
                         ("codeclm.pipelines.cli", "add_generation_commands"),
                         ("codeclm.pipelines.voice_cli", "add_voice_commands")):
        try:
            mod = __import__(module, fromlist=[hook])
        except ModuleNotFoundError as exc:
            if exc.name and not module.startswith(exc.name):
                raise  # a real missing dependency, not an absent optional command group
            continue
        getattr(mod, hook)(sub)
    add_threads_option(parser)
    return parser


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Give every command (each leaf parser under ``parser``) a ``--threads N`` option; :func:`run`
    applies it (default: :func:`codeclm.threads.default_threads`, which does not oversubscribe)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for child in dict.fromkeys(action.choices.values()):
            add_threads_option(child)
    if not subparsers and not any("--threads" in a.option_strings for a in parser._actions):
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help="CPU threads (default: the CPUs not busy with other work; env CODECLM_THREADS)")


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command with ``--threads`` applied; a CodecLMError becomes
    one line and exit 1."""
    add_threads_option(parser)  # idempotent: parsers built elsewhere (generate.py) get it too
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        threads = getattr(args, "threads", None)
        if threads is not None and threads < 1:
            parser.error(f"--threads must be >= 1, got {threads}")
        from codeclm.threads import set_threads

        set_threads(threads)
        return int(args.func(args) or 0)
    except CodecLMError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
