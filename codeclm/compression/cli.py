"""``codeclm compress``, ``codeclm decompress`` and ``codeclm info``.

The top-level CLI calls :func:`add_compression_commands` on its subparsers; each subcommand sets
``func`` to a handler returning an exit code. Handlers raise :class:`~codeclm.errors.CodecLMError`
on failure; :func:`main` (also ``python -m codeclm.compression.cli``) prints them as one line.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

from codeclm.compression.api import STDIO, compress_file, decompress_file, read_info
from codeclm.errors import CodecLMError

__all__ = ["add_compression_commands", "main"]


def _relative_size(kbps: float, raw_kbps: float) -> str:
    change = 100 * (1 - kbps / raw_kbps)
    return f"{change:.1f}% smaller" if change >= 0 else f"{-change:.1f}% larger: container overhead"


def add_compression_commands(subparsers) -> None:
    """Register ``compress``, ``decompress`` and ``info`` on an argparse subparsers object."""
    p = subparsers.add_parser("compress", help="compress an audio file to .cclm",
                              description="Compress audio (wav/flac/ogg/...) with the codec and an entropy coder.")
    p.add_argument("input", help="audio file, or - for stdin")
    p.add_argument("output", help=".cclm file to write, or - for stdout")
    p.add_argument("-b", "--bandwidth", type=float, default=6.0, help="codec bandwidth in kbps (default 6)")
    p.add_argument("--model", default=None, help="codec folder (default: the shipped codec)")
    p.add_argument("--chunk-seconds", type=float, default=5.0, help="seconds per checksummed chunk (default 5)")
    _common(p)
    p.set_defaults(func=_pipe_safe(_compress))

    p = subparsers.add_parser("decompress", help="decompress a .cclm file to audio",
                              description="Decode a .cclm file; the output format follows the extension.")
    p.add_argument("input", help=".cclm file, or - for stdin")
    p.add_argument("output", help="audio file (.wav/.flac/.ogg), or - for WAV on stdout")
    p.add_argument("--model", default=None, help="codec folder: must be the one that compressed the file")
    p.add_argument("--format", default=None, help="soundfile format (WAV, FLAC, OGG) instead of the extension")
    p.add_argument("--subtype", default=None, help="soundfile subtype, e.g. PCM_16 (default), PCM_24, FLOAT")
    _common(p)
    p.set_defaults(func=_pipe_safe(_decompress))

    p = subparsers.add_parser("info", help="print the header of a .cclm file",
                              description="Print a .cclm file's header and check every chunk's CRC.")
    p.add_argument("input", help=".cclm file, or - for stdin")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--no-verify", action="store_true", help="read the header only")
    p.set_defaults(func=_pipe_safe(_info))


def _pipe_safe(fn):
    """A closed stdout (``codeclm info x.cclm | head -1``) ends the command quietly with the
    status a SIGPIPE would give (141), instead of a BrokenPipeError traceback."""
    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except BrokenPipeError:
            try:  # the interpreter flushes stdout at exit: point it at /dev/null first
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            return 141
    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def _compress(args) -> int:
    if not (math.isfinite(args.chunk_seconds) and args.chunk_seconds > 0):
        raise CodecLMError(f"--chunk-seconds must be a positive number of seconds, got {args.chunk_seconds}")
    if not math.isfinite(args.bandwidth) or args.bandwidth <= 0:
        raise CodecLMError(f"--bandwidth must be a positive number of kbps, got {args.bandwidth}")
    stats = compress_file(args.input, args.output, model=args.model, bandwidth=args.bandwidth, force=args.force,
                          quiet=args.quiet, chunk_seconds=args.chunk_seconds)
    if not args.quiet:
        print(f"{args.input} -> {args.output}: {stats.summary()}", file=sys.stderr)
    return 0


def _decompress(args) -> int:
    header = decompress_file(args.input, args.output, model=args.model, force=args.force, quiet=args.quiet,
                             format=args.format, subtype=args.subtype)
    if not args.quiet:
        print(f"{args.input} -> {args.output}: {header.duration:.2f} s at {header.sample_rate} Hz, "
              f"{header.channels} channel(s)", file=sys.stderr)
    return 0


def _info(args) -> int:
    info = read_info(args.input, verify=not args.no_verify)
    if args.json:
        print(json.dumps(info))
        return 0
    bw = f"{info['bandwidth']} kbps" if info["bandwidth"] else "all codebooks"
    lines = [
        f"file:          {args.input if args.input != STDIO else '<stdin>'} ({info['file_bytes']} bytes)",
        f"model:         {info['model_name']} (weights sha256 {info['model_sha256']})",
        f"audio:         {info['sample_rate']} Hz, {info['channels']} channel(s), {info['num_samples']} samples "
        f"({info['duration_s']:.3f} s)",
        f"source:        {info['source_sample_rate']} Hz, {info['source_channels']} channel(s)",
        f"codes:         {info['num_codebooks']} codebooks x {info['bins']} bins, hop {info['hop_length']}, "
        f"{info['num_frames']} frames, bandwidth {bw}",
        f"chunks:        {info.get('chunks', '?')} of up to {info['chunk_frames']} frames, entropy model "
        f"{info['entropy_model']}",
        f"bitrate:       {info['file_kbps']:.3f} kbps (raw codes {info['raw_kbps']:.3f} kbps, "
        f"{_relative_size(info['file_kbps'], info['raw_kbps'])})",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":  # python -m codeclm.compression.cli ... == codeclm ...
    from codeclm.cli import main

    sys.exit(main())
