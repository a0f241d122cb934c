"""``codeclm compress``, ``decompress``, ``info`` and ``roundtrip``: the codec as a file compressor."""

from __future__ import annotations

import json

from codeclm.cli.common import add_bandwidth, add_command, add_force, add_model, add_quiet, positive, report

DEFAULT_BANDWIDTH = 6.0


def _file_command(sub, name: str, help: str, description: str, source: str, target: str, func,
                  model_help: str | None = None, bandwidth: bool = False, extra=None,
                  quiet: str = "no progress bar or summary"):
    """A command that reads one file and writes another: INPUT OUTPUT, --model, --force, --quiet."""
    p = add_command(sub, name, help, description)
    p.add_argument("input", help=source)
    p.add_argument("output", help=target)
    if bandwidth:
        add_bandwidth(p, DEFAULT_BANDWIDTH)
    add_model(p, "codec", model_help)
    if extra is not None:
        extra(p)
    add_force(p, "overwrite an existing output file")
    add_quiet(p, quiet)
    p.set_defaults(func=func)


def _decompress_options(p) -> None:
    p.add_argument("--format", default=None, help="WAV, FLAC or OGG instead of the output's extension")
    p.add_argument("--subtype", default=None,
                   help="sample format: PCM_16, PCM_24, FLOAT ... (default: the format's usual one, PCM_16 for WAV "
                        "and FLAC)")


def register(sub) -> None:
    _file_command(sub, "compress", "compress an audio file to .cclm",
                  "Compress audio (wav, flac, ogg, ...) with the codec and an entropy coder into a checksummed "
                  ".cclm file.", "audio file, or - for stdin", ".cclm file to write, or - for stdout", _compress,
                  bandwidth=True, extra=lambda p: p.add_argument(
                      "--chunk-seconds", type=float, default=5.0, help="seconds of audio per checksummed chunk"))
    _file_command(sub, "decompress", "decompress a .cclm file to audio",
                  "Decode a .cclm file; the audio format follows the output's extension.",
                  ".cclm file, or - for stdin", "audio file (.wav, .flac, .ogg), or - for WAV on stdout", _decompress,
                  "codec folder: the one that compressed the file (default: the shipped checkpoints/codec)",
                  extra=_decompress_options)
    _file_command(sub, "roundtrip", "encode and decode an audio file through the codec",
                  "Encode and decode an audio file through the codec, to hear what a bandwidth sounds like.",
                  "audio file", "audio file to write (.wav, .flac, .ogg)", _roundtrip, bandwidth=True,
                  quiet="no summary")

    p = add_command(sub, "info", "print the header of a .cclm file",
                    "Print a .cclm file's header and check every chunk's checksum.")
    p.add_argument("input", help=".cclm file, or - for stdin")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--no-verify", action="store_true", help="read the header only (no chunk checks)")
    p.set_defaults(func=_info)


def _bandwidth(args) -> None:
    positive(args.bandwidth, "--bandwidth", "kbps")


def _compress(args) -> int:
    from codeclm.compression.api import compress_file

    positive(args.chunk_seconds, "--chunk-seconds")
    _bandwidth(args)
    stats = compress_file(args.input, args.output, model=args.model, bandwidth=args.bandwidth, force=args.force,
                          quiet=args.quiet, chunk_seconds=args.chunk_seconds)
    report(f"{args.input} -> {args.output}: {stats.summary()}", args.quiet)
    return 0


def _decompress(args) -> int:
    from codeclm.compression.api import decompress_file

    header = decompress_file(args.input, args.output, model=args.model, force=args.force, quiet=args.quiet,
                             format=args.format, subtype=args.subtype)
    report(f"{args.input} -> {args.output}: {header.duration:.2f} s at {header.sample_rate} Hz, "
           f"{header.channels} channel(s)", args.quiet)
    return 0


def _relative_size(kbps: float, raw_kbps: float) -> str:
    change = 100 * (1 - kbps / raw_kbps)
    return f"{change:.1f}% smaller" if change >= 0 else f"{-change:.1f}% larger: container overhead"


def _info(args) -> int:
    from codeclm.compression.api import STDIO, read_info

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


def _roundtrip(args) -> int:
    import torch

    from codeclm.audio import load_audio, save_audio
    from codeclm.cli.common import refuse_existing
    from codeclm.codec import load_model

    _bandwidth(args)
    refuse_existing([args.output], args.force)
    codec = load_model(args.model)
    wav, _ = load_audio(args.input, codec.sample_rate, codec.channels)
    with torch.inference_mode():
        codes = codec.encode(wav[None], bandwidth=args.bandwidth)
        audio = codec.decode(codes)[0, :, : wav.shape[-1]]
    save_audio(args.output, audio, codec.sample_rate)
    report(f"{args.input} -> {args.output}: {codes.shape[1]} codebooks x {codes.shape[-1]} frames "
           f"({codec.bandwidth_of(codes.shape[1]):g} kbps raw) at {codec.sample_rate} Hz", args.quiet)
    return 0
