"""Codec speed: codeclm vs transformers' EncodecModel on the same weights, in one run.

Builds a random EnCodec-24kHz-sized model (transformers' default config, 14.9 M parameters),
imports the very same weights into codeclm, checks both give the same codes and audio, then
times encode + decode of 10 s at 6 kbps (best of a few runs, inference mode for both). Also
times codeclm's exact-streaming variant (the same weights with zero padding) offline and in
20 ms chunks on one thread. Prints one JSON line.

    python benchmarks/codec_speed.py [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from transformers import EncodecConfig, EncodecModel

    from codeclm.codec import Codec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-seconds", type=float, default=3.0, help="audio streamed in 20 ms chunks")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    hf = EncodecModel(EncodecConfig()).eval()
    with torch.no_grad():
        for layer in hf.quantizer.layers:
            layer.codebook.embed.normal_()
    ours = Codec.from_hf(hf)
    sr = ours.sample_rate
    wav = 0.1 * torch.randn(1, 1, int(args.seconds * sr))
    bw = args.bandwidth

    with torch.inference_mode():
        ref = hf.encode(wav, bandwidth=bw)
        ref_audio = hf.decode(ref.audio_codes, ref.audio_scales)[0]
        codes = ours.encode(wav, bw)
        same_codes = bool(torch.equal(codes, ref.audio_codes[0]))
        max_diff = float((ours.decode(codes) - ref_audio).abs().max())
        t_hf = best_time(lambda: hf.decode(*hf.encode(wav, bandwidth=bw)[:2]), args.repeats)
        t_ours = best_time(lambda: ours.decode(ours.encode(wav, bw)), args.repeats)

        cfg = ours.config
        cfg_stream = type(cfg)(**{**cfg.__dict__, "pad_mode": "constant"})
        streamer = Codec(cfg_stream).eval()
        streamer.load_state_dict(ours.state_dict())
        t_stream_offline = best_time(lambda: streamer.decode(streamer.encode(wav, bw)), 1)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        chunk = int(0.02 * sr)
        piece = wav[..., : int(args.stream_seconds * sr)]
        start = time.perf_counter()
        with streamer.streaming(1):
            for i in range(0, piece.shape[-1], chunk):
                streamer.decode(streamer.encode(piece[..., i: i + chunk], bw))
        t_stream = time.perf_counter() - start
        torch.set_num_threads(threads)

    seconds = args.seconds
    print(json.dumps({
        "benchmark": "codec_speed",
        "model": "EnCodec 24 kHz config (random weights), 6 kbps",
        "audio_seconds": seconds,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "identical_codes": same_codes,
        "max_abs_audio_diff": max_diff,
        "transformers_seconds": round(t_hf, 4),
        "codeclm_seconds": round(t_ours, 4),
        "transformers_x_realtime": round(seconds / t_hf, 2),
        "codeclm_x_realtime": round(seconds / t_ours, 2),
        "speedup_vs_transformers": round(t_hf / t_ours, 2),
        "codeclm_exact_streaming_model_offline_x_realtime": round(seconds / t_stream_offline, 2),
        "streaming_20ms_rtf_1thread": round(t_stream / args.stream_seconds, 3),
        "algorithmic_latency_ms": round(1000 * streamer.latency, 2),
    }))


if __name__ == "__main__":
    main()
