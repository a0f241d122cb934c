"""``codeclm eval codec`` (objective codec metrics per bandwidth, optionally against Opus) and
``codeclm eval clone`` (voice cloning: WER, speaker similarity, real-time factor)."""

from __future__ import annotations

import json
from pathlib import Path

from codeclm.cli.common import add_bandwidth, add_command, add_group, add_model, add_quiet, add_seed, deprecated
from codeclm.errors import CodecLMError


def register(sub) -> None:
    sub = add_group(sub, "eval", "objective evaluation: codec metrics per bandwidth (and Opus), voice cloning")

    p = add_command(sub, "codec", "codec metrics at several bandwidths, optionally against Opus",
                    "Encode and decode every file at each bandwidth and print one JSON line per (system, "
                    "bandwidth) with the mean metrics and the bitrate reached.")
    p.add_argument("input", help="folder of audio files, manifest (.jsonl) or one audio file")
    add_model(p, "codec")
    deprecated(p, "--bandwidths", add_bandwidth(p, None, "bandwidths in kbps (default: every bandwidth of the model)",
                                                many=True))
    p.add_argument("--opus", action="store_true", help="also run Opus (ffmpeg with libopus) at the same bitrates")
    p.add_argument("--max-files", type=int, default=None, help="evaluate only the first N files (default: all)")
    p.add_argument("--seconds", type=float, default=None, help="crop each file to its first S seconds "
                                                               "(default: whole files)")
    p.add_argument("--metrics", nargs="+", default=None, choices=["si_sdr", "mel", "stft", "pesq", "stoi"],
                   help="metrics to compute (default: si_sdr mel stft, plus pesq stoi when every record "
                        "has a transcript)")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="also write the JSON lines to this file")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=_eval_codec)

    p = add_command(sub, "clone", "voice cloning: word error rate, speaker similarity, real-time factor",
                    "Clone each pair's reference voice saying its text, then print the word error rate "
                    "(pocketsphinx; ref_wer: the same recognizer on the references), the speaker similarity to "
                    "the own and to the other references (Resemblyzer) and the real-time factor.")
    p.add_argument("pairs", help="JSON-lines file: ref (audio, relative to the file), text, and optionally "
                                 "ref_text, language (default en), speaker")
    add_model(p, "voice")
    add_seed(p, "sampling seed, the same for every pair")
    p.add_argument("--json", action="store_true", help="one JSON line instead of text")
    p.add_argument("--details", action="store_true", help="also per-pair results (transcript, WER, similarity)")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=_eval_clone)


def _eval_codec(args) -> int:
    from codeclm.codec import load_model
    from codeclm.evaluation.codec_eval import collect_inputs, evaluate_codec
    from codeclm.fileio import atomic_output

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise CodecLMError(f"{args.output}: folder {Path(args.output).parent} does not exist")
    codec = load_model(args.model)
    items = collect_inputs(args.input, max_files=args.max_files)
    bandwidths = args.bandwidth if args.bandwidth else codec.target_bandwidths
    rows = evaluate_codec(codec, items, bandwidths, metrics=args.metrics, opus=args.opus,
                          seconds=args.seconds, progress=not args.quiet)
    lines = [json.dumps(row) for row in rows]
    for line in lines:
        print(line, flush=True)
    if args.output:
        with atomic_output(args.output) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return 0


def _eval_clone(args) -> int:
    from codeclm.evaluation.clone_eval import check_dependencies, evaluate_clone, read_pairs
    from codeclm.pipelines import VoiceClone

    pairs = read_pairs(args.pairs)  # bad input fails before any model is loaded
    check_dependencies()
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
