"""``codeclm data ...``: manifests from folders, synthesis and packaged recordings; ``merge``; and
``tokenize``, which encodes a manifest into a token cache for LM training."""

from __future__ import annotations

import sys
from pathlib import Path

from codeclm.cli.common import (add_bandwidth, add_command, add_force, add_group, add_model, add_quiet, add_seed,
                                deprecated, deprecated_flag, report)
from codeclm.errors import AudioError, CodecLMError

MAX_REPEAT = 100_000
REAL = {  # command -> (codeclm.data.real function, what it reads)
    "real-speech": ("asterisk_speech", "Asterisk English prompts (Debian package asterisk-core-sounds-en-wav)"),
    "real-music": ("wesnoth_music", "Wesnoth soundtrack (Debian package wesnoth-1.16-music)"),
    "real-speech-other": ("asterisk_other_speech", "Asterisk Spanish, Italian and Russian prompts "
                                                    "(Debian packages asterisk-core-sounds-es/it/ru-wav)"),
    "real-klettres": ("klettres_speech", "klettres letters and syllables (Debian package klettres-data)"),
}
SKIP_HELP = "skip unreadable audio files (each is reported) instead of stopping at the first"


def register(sub) -> None:
    sub = add_group(sub, "data", "build audio manifests (scan, synthesize, packaged recordings) and token caches")

    p = add_command(sub, "scan", "write a manifest of the audio files below a folder",
                    "Write a manifest (JSON lines) of the audio files below a folder; name.txt beside an audio "
                    "file is its transcript, name.caption.txt its caption.")
    p.add_argument("dir", help="folder to scan recursively (.wav .flac .ogg .mp3)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="manifest to write (JSON lines)")
    p.add_argument("--skip-errors", action="store_true", help=SKIP_HELP)
    p.add_argument("--no-sidecar", action="store_true", help="ignore name.txt and name.caption.txt files")
    p.set_defaults(func=_scan)

    p = add_command(sub, "synth-speech", "speak generated sentences with espeak-ng (or flite)")
    p.add_argument("out_dir", help="folder to write the audio and manifest.jsonl to")
    p.add_argument("-n", type=int, required=True, help="number of utterances")
    add_seed(p, "random seed of the sentences and voices")
    p.add_argument("--languages", nargs="+", default=["en-us", "en-gb"],
                   help="espeak-ng language codes (en-us en-gb de fr es it)")
    p.add_argument("--engine", choices=["espeak-ng", "flite"], default="espeak-ng",
                   help="synthesizer: espeak-ng (many voices and languages) or flite (English voices kal16, awb, "
                        "rms, slt; ignores --languages)")
    p.set_defaults(func=_synth_speech)

    p = add_command(sub, "synth-music", "render generated MIDI pieces with fluidsynth, with captions")
    p.add_argument("out_dir", help="folder to write the audio and manifest.jsonl to")
    p.add_argument("-n", type=int, required=True, help="number of pieces")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per piece")
    add_seed(p, "random seed of the pieces")
    p.add_argument("--soundfont", default=None, help="a .sf2 file (default: an installed General MIDI soundfont)")
    p.add_argument("--sample-rate", type=int, default=24000, help="sample rate of the audio in Hz")
    p.set_defaults(func=_synth_music)

    for name, (_, what) in REAL.items():
        p = add_command(sub, name, f"manifests of the {what}, split into train and held-out")
        p.add_argument("out_dir", help="folder for manifest.jsonl, train.jsonl and heldout.jsonl")
        p.add_argument("--held-out", type=float, default=0.1,
                       help="fraction of the files held out for evaluation (chosen by file name)")
        p.set_defaults(func=_real, source=name)

    p = add_command(sub, "merge", "concatenate manifests (MANIFEST*N repeats one N times to weight it)")
    p.add_argument("inputs", nargs="+", metavar="MANIFEST[*N]")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="manifest to write")
    p.set_defaults(func=_merge)

    p = add_command(sub, "tokenize", "encode a manifest with the codec into a sharded token cache",
                    "Encode every record of a manifest once into a token cache (shard_*.safetensors, index.jsonl, "
                    "meta.json) for LM training; running it again resumes where a stopped run ended.")
    p.add_argument("manifest", help="manifest to encode (JSON lines)")
    p.add_argument("-o", "--output", required=True, metavar="FOLDER", help="cache folder")
    deprecated(p, "--codec", add_model(p, "codec"))
    add_bandwidth(p, None, "codec bandwidth in kbps (default: all codebooks)")
    p.add_argument("--shard-frames", type=int, default=1 << 20, help="codec frames per shard file")
    deprecated(p, "--overwrite", add_force(p, "delete an existing cache and start again (default: resume it)"))
    p.add_argument("--skip-errors", action="store_true", help=SKIP_HELP)
    deprecated_flag(p, "--fail-on-error", "stopping at the first unreadable file is now the default "
                                          "(--skip-errors skips them)")
    p.add_argument("--chroma", action="store_true",
                   help="also store each frame's dominant pitch class (for melody-conditioned music models)")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=_tokenize)


def _scan(args) -> int:
    from codeclm.data.manifest import scan_folder, write_manifest

    result = scan_folder(args.dir, sidecar=not args.no_sidecar, skip_errors=args.skip_errors)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_manifest(result.records, args.output)
    for _, message in result.errors:
        print(f"codeclm data scan: skipped: {message}", file=sys.stderr)
    print(f"{args.output}: {result.summary()}")
    return 0


def _written(out_dir, records, what: str) -> int:
    minutes = sum(r.duration for r in records) / 60
    print(f"{Path(out_dir) / 'manifest.jsonl'}: {len(records)} {what}, {minutes:.1f} min")
    return 0


def _synth_speech(args) -> int:
    from codeclm.data import synth_speech

    if args.engine == "flite":
        records = synth_speech.synth_flite(args.out_dir, args.n, seed=args.seed)
    else:
        records = synth_speech.synth_speech(args.out_dir, args.n, languages=tuple(args.languages), seed=args.seed)
    return _written(args.out_dir, records, f"utterances, {len({r.speaker for r in records})} speakers")


def _synth_music(args) -> int:
    from codeclm.data.synth_music import synth_music

    records = synth_music(args.out_dir, args.n, duration=args.duration, seed=args.seed,
                          soundfont=args.soundfont, sample_rate=args.sample_rate)
    return _written(args.out_dir, records, "pieces")


def _real(args) -> int:
    from codeclm.data import real

    records = getattr(real, REAL[args.source][0])()
    real.write_split_manifests(records, args.out_dir, fraction=args.held_out)
    train, held = real.split_held_out(records, args.held_out)
    print(f"{args.out_dir}: manifest.jsonl ({len(records)}), train.jsonl ({len(train)}), "
          f"heldout.jsonl ({len(held)})")
    return 0


def _tokenize(args) -> int:
    from codeclm.codec import load_model
    from codeclm.data.tokens import tokenize_corpus

    if args.shard_frames <= 0:
        raise CodecLMError(f"--shard-frames must be positive, got {args.shard_frames}")
    codec = load_model(args.model)
    try:
        result = tokenize_corpus(args.manifest, codec, args.output, bandwidth=args.bandwidth,
                                 shard_frames=args.shard_frames, resume=not args.force,
                                 progress=not args.quiet, fail_on_error=not args.skip_errors,
                                 chroma=args.chroma)
    except AudioError as exc:
        raise AudioError(f"{exc} (--skip-errors skips unreadable files; run again to resume)") from None
    print(result.summary())
    for _, message in result.errors:
        print(f"codeclm data tokenize: skipped: {message}", file=sys.stderr)
    return 0


def _merge(args) -> int:
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
    report(f"{args.output}: {count} records from {len(args.inputs)} manifests")
    return 0
