"""Does speech survive the codec? ASR word error rate after a round trip, beside Opus, one JSON line.

    apt-get install espeak-ng flite festival festvox-kallpc16k ffmpeg
    python benchmarks/codec_intelligibility.py [--model FOLDER] [--sentences 3] [--bandwidths 1.5 3 6 12]
    python benchmarks/codec_intelligibility.py --tiny          # CI: a random tiny codec, one voice

Utterances: template sentences spoken by voices no shipped codec was trained on (espeak-ng
Caribbean and West Midlands English with variants, flite ``kal``, Festival ``kal_diphone``; see
``codeclm.evaluation.intelligibility``). Each is transcribed by pocketsphinx restricted to the
sentences' vocabulary: as recorded, after the codec at each bandwidth and after Opus (libopus via
ffmpeg). The goal of issue 12: the codec's WER at 3 kbps within +0.05 of the originals'. Also
reports the tonal-artifact score (``codeclm.metrics.spectral_lines``) on white noise and on the
utterances, at 6 kbps, beside Opus 6 kbps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from codeclm.baselines import opus_available, opus_roundtrip
from codeclm.codec import Codec, CodecConfig, load_model
from codeclm.evaluation.intelligibility import UNSEEN_VOICES, evaluate_intelligibility, unseen_voice_sentences
from codeclm.metrics import spectral_lines
from codeclm.threads import cpu_model


def line_scores(codec, items, bandwidth: float) -> dict:
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(1, codec.sample_rate * 6, generator=g)
    speech = torch.cat([it.wav for it in items], -1)
    out = {}
    for name, x in (("noise", noise), ("speech", speech)):
        with torch.inference_mode():
            y = codec.decode(codec.encode(x[None], bandwidth=bandwidth))[0, :, : x.shape[-1]]
        score, hz = spectral_lines(x, y, codec.sample_rate, return_frequency=True)
        out[f"codec_{name}_db"], out[f"codec_{name}_hz"] = round(score, 2), round(hz)
        if opus_available():
            out[f"opus_{name}_db"] = round(spectral_lines(x, opus_roundtrip(x, codec.sample_rate, bandwidth)[0],
                                                          codec.sample_rate), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="codec folder (default: the shipped checkpoints/codec)")
    p.add_argument("--sentences", type=int, default=3, help="sentences per voice (default 3)")
    p.add_argument("--bandwidths", type=float, nargs="+", default=[1.5, 3.0, 6.0, 12.0])
    p.add_argument("--opus", type=float, nargs="+", default=[6.0, 12.0], help="Opus bitrates (kbps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="a random tiny codec and one voice (CI)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        codec = Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, lstm_layers=0,
                                  target_bandwidths=[4.5, 9.0], kmeans_init=False)).eval()
        voices, args.sentences, args.bandwidths, args.opus = UNSEEN_VOICES[:1], 1, [4.5], [6.0]
        name = "random-tiny"
    else:
        codec = load_model(args.model)  # None: the shipped default, whatever its codec class
        voices, name = UNSEEN_VOICES, args.model or "checkpoints/codec"
    t0 = time.perf_counter()
    items = unseen_voice_sentences(args.sentences, voices, codec.sample_rate)
    result = evaluate_intelligibility(codec, items, args.bandwidths, args.opus)
    three = result["codec"].get("3")
    row = {"benchmark": "codec_intelligibility", "model": name, "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, **result,
           "codec_3kbps_minus_original": None if three is None else round(three - result["original_wer"], 4),
           "goal_3kbps_within_0.05": None if three is None else three <= result["original_wer"] + 0.05,
           "lines_6kbps": line_scores(codec, items, 6.0 if not args.tiny else args.bandwidths[0]),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
