"""Codec quality beside Opus, as issue 12's goal lines ask: one JSON line.

    python benchmarks/codec_quality.py [--model FOLDER] [--speech MANIFEST] [--music MANIFEST] [--files 24]
    python benchmarks/codec_quality.py --tiny        # CI: a random tiny codec, two short files

* speech: held-out real speech (default: the Asterisk held-out split, ``codeclm data real-speech``)
  and unseen synthetic voices (espeak-ng Caribbean/West Midlands English, flite ``kal``, Festival
  ``kal_diphone``: ``codeclm.evaluation.intelligibility.UNSEEN_VOICES``), PESQ (wideband), STOI and the
  phase-derivative distance (``codeclm.metrics.phase_distance``)
  of the codec at 3 and 6 kbps, of Opus at 6 kbps and at its lowest useful rate (``--opus-low``,
  5 kbps);
* music: mel and STFT distances of the codec and of Opus at 6 kbps on held-out music (default: the
  Wesnoth held-out split, ``codeclm data real-music``).

``goals`` holds the booleans of the issue: 6 kbps PESQ and STOI above Opus 6 kbps, 3 kbps above
Opus at its lowest rate (both speech sets), music mel and STFT at 6 kbps no worse than Opus 6 kbps.
Every number comes from ``codeclm.evaluation.codec_eval.evaluate_codec`` in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from codeclm.audio import save_audio
from codeclm.codec import Codec, CodecConfig, load_model
from codeclm.data import read_manifest
from codeclm.evaluation.codec_eval import evaluate_codec
from codeclm.evaluation.intelligibility import UNSEEN_VOICES, unseen_voice_sentences
from codeclm.threads import cpu_model

DATA = Path(os.environ.get("CODECLM_DATA", Path.home() / "codeclm-data"))
SPEECH_METRICS = ("pesq", "stoi", "mel", "phase")  # phase: lower is better (codeclm.metrics.phase_distance)
MUSIC_METRICS = ("mel", "stft")


def _rows(rows: list[dict], metrics) -> dict:
    return {f"{r['system']}@{r['bandwidth_kbps']:g}": {m: r.get(m) for m in metrics} for r in rows}


def speech_table(codec, items, opus_low: float, metrics=SPEECH_METRICS) -> dict:
    """Codec at 3 and 6 kbps, Opus at ``opus_low`` and 6 kbps, in one evaluate_codec pass."""
    return _rows(evaluate_codec(codec, items, [3.0, 6.0], metrics=list(metrics), opus=[opus_low, 6.0]), metrics)


def speech_goals(table: dict, opus_low: float) -> dict:
    def above(a: str, b: str) -> bool:
        return all(table[a][m] is not None and table[b][m] is not None and table[a][m] > table[b][m]
                   for m in ("pesq", "stoi"))

    return {"6kbps_above_opus6": above("codeclm@6", "opus@6"),
            "3kbps_above_opus_low": above("codeclm@3", f"opus@{opus_low:g}")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="codec folder (default: the shipped checkpoints/codec)")
    p.add_argument("--speech", default=str(DATA / "speech_real" / "heldout.jsonl"), help="held-out real speech")
    p.add_argument("--music", default=str(DATA / "music_real" / "heldout.jsonl"), help="held-out music")
    p.add_argument("--files", type=int, default=24, help="files per set (default 24)")
    p.add_argument("--sentences", type=int, default=2, help="sentences per unseen voice (default 2)")
    p.add_argument("--music-seconds", type=float, default=10.0, help="seconds per music file (default 10)")
    p.add_argument("--opus-low", type=float, default=5.0, help="Opus's lowest rate compared with 3 kbps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="a random tiny codec and generated clips (CI)")
    p.add_argument("--results", default=None, help="also append the JSON line to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            codec = Codec(CodecConfig(n_filters=4, dimension=16, ratios=[8, 5, 4, 3], bins=1024, lstm_layers=0,
                                      target_bandwidths=[3.0, 6.0], kmeans_init=False)).eval()
            name = "random-tiny"
            voices, args.sentences = UNSEEN_VOICES[:1], 1
        else:
            codec, name, voices = load_model(args.model), args.model or "checkpoints/codec", UNSEEN_VOICES
        # unseen synthetic voices, written as files so every set goes through the same evaluator
        spoken = []
        for i, item in enumerate(unseen_voice_sentences(args.sentences, voices, codec.sample_rate)):
            spoken.append(save_audio(Path(tmp) / f"unseen_{i}.wav", item.wav, codec.sample_rate))
        if args.tiny or not Path(args.speech).exists():
            real = spoken[:1] if args.tiny else []
        else:
            real = read_manifest(args.speech)[: args.files]
        row = {"benchmark": "codec_quality", "model": name, "cpu": cpu_model(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "real_speech_files": len(real), "unseen_voice_files": len(spoken)}
        goals = {}
        if real:
            row["real_speech"] = speech_table(codec, real, args.opus_low)
            goals.update({f"real_{k}": v for k, v in speech_goals(row["real_speech"], args.opus_low).items()})
        row["unseen_voices"] = speech_table(codec, spoken, args.opus_low)
        goals.update({f"unseen_{k}": v for k, v in speech_goals(row["unseen_voices"], args.opus_low).items()})
        music = ([] if args.tiny or not Path(args.music).exists() else read_manifest(args.music)[: args.files])
        if args.tiny:
            music = spoken[:1]
        if music:
            table = _rows(evaluate_codec(codec, music, [6.0], metrics=list(MUSIC_METRICS), opus=[6.0],
                                         seconds=args.music_seconds), MUSIC_METRICS)
            row["music"] = table
            goals["music_6kbps_not_worse_than_opus6"] = all(
                table["codeclm@6"][m] <= table["opus@6"][m] for m in MUSIC_METRICS)
    row["goals"] = goals
    row["seconds"] = round(time.perf_counter() - t0, 1)
    line = json.dumps(row)
    print(line)
    if args.results:
        with open(args.results, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
