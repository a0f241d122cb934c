"""Codec speed: codeclm vs transformers' EncodecModel on the same weights, in one run.

Builds a random EnCodec-24kHz-sized model (transformers' default config, 14.9 M parameters),
imports the very same weights into codeclm, checks both give the same codes and audio, then
times encode + decode of 10 s at 6 kbps (best of a few runs, inference mode for both, the two
implementations interleaved so a busy machine slows both alike). codeclm's offline encode of
this causal reflect-padded model *is* its exact-streaming path (one stream over the signal), so
the main ratio is the exact path's. Also timed: the zero-padded variant (``pad_mode="constant"``,
what the shipped codec and ``compress`` run) and streaming in 20 ms chunks on one thread, with a
check that the stream's codes equal offline's.

The LSTMs (two layers in the encoder and two in the decoder, one step per frame) are timed apart,
beside their floor: each step must read the recurrent weight (``4 * dim * dim`` floats, 4 MB at
dim 512: more than a core's L2 on one thread), so ``lstm_floor_seconds`` times those bare products
alone (``[1, dim] @ [dim, 4 * dim]``, every step of the 10 s) and ``max_speedup_vs_transformers``
is transformers' time over codeclm's with its LSTMs at that floor.

Ratios are reported on wall-clock and on process CPU time (``*_cpu``: robust to other processes'
load on a shared machine). Prints one JSON line with the machine and appends it to
``benchmarks/results/codec_speed.jsonl`` (``--results ''`` for none).

    python benchmarks/codec_speed.py [--seconds 10] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import best_time, interleaved, write_result  # noqa: E402  (this folder is on sys.path when run as a script)


def _lstm_costs(ours, hf, frames: int, repeats: int) -> dict:
    """Seconds of both implementations' LSTMs (encoder's and decoder's, ``frames`` steps each) and
    of the bare per-step recurrent products (the floor)."""
    from codeclm.codec.layers import StreamingLSTM, lstm_stream_rows

    mine = [m for m in ours.modules() if isinstance(m, StreamingLSTM)]
    theirs = [m for m in hf.modules() if type(m).__name__ == "EncodecLSTM"]
    dim = mine[0].lstm.hidden_size
    x = 0.1 * torch.randn(1, frames, dim)

    def run_mine():
        for m in mine:
            m._streaming_state = m._init_streaming_state(1)
            lstm_stream_rows(m, x)
            m._streaming_state = None

    def run_theirs():
        for m in theirs:
            m(x.transpose(1, 2))

    weights = [getattr(m.lstm, f"weight_hh_l{k}").detach().t().contiguous()
               for m in mine for k in range(m.lstm.num_layers)]
    h, bias = torch.zeros(1, dim), torch.zeros(1, 4 * dim)

    def floor():
        for w in weights:
            for _ in range(frames):
                torch.addmm(bias, h, w)

    wall, cpu = interleaved({"codeclm": run_mine, "transformers": run_theirs, "floor": floor}, repeats)
    return {"codeclm_lstm_seconds": round(cpu["codeclm"], 4), "transformers_lstm_seconds": round(cpu["transformers"], 4),
            "lstm_floor_seconds": round(cpu["floor"], 4), "lstm_steps": frames * len(weights),
            "lstm_weight_mb_per_step": round(4 * dim * 4 * dim / 2 ** 20, 2)}


def main() -> None:
    from transformers import EncodecConfig, EncodecModel

    from codeclm.codec import Codec
    from codeclm.threads import machine_info, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: codeclm's (CPUs not busy elsewhere)")
    parser.add_argument("--stream-seconds", type=float, default=3.0, help="audio streamed in 20 ms chunks")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "codec_speed.jsonl"))
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = round(os.getloadavg()[0], 2)

    torch.manual_seed(0)
    hf = EncodecModel(EncodecConfig()).eval()
    with torch.no_grad():
        for layer in hf.quantizer.layers:
            layer.codebook.embed.normal_()
    ours = Codec.from_hf(hf)
    sr = ours.sample_rate
    wav = 0.1 * torch.randn(1, 1, int(args.seconds * sr))
    bw = args.bandwidth

    cfg = ours.config
    zero_pad = Codec(type(cfg)(**{**cfg.__dict__, "pad_mode": "constant"})).eval()
    zero_pad.load_state_dict(ours.state_dict())
    with torch.inference_mode():
        ref = hf.encode(wav, bandwidth=bw)
        ref_audio = hf.decode(ref.audio_codes, ref.audio_scales)[0]
        codes = ours.encode(wav, bw)
        same_codes = bool(torch.equal(codes, ref.audio_codes[0]))
        max_diff = float((ours.decode(codes) - ref_audio).abs().max())
        wall, cpu = interleaved({
            "transformers": lambda: hf.decode(*hf.encode(wav, bandwidth=bw)[:2]),
            "codeclm": lambda: ours.decode(ours.encode(wav, bw)),
            "zero_pad": lambda: zero_pad.decode(zero_pad.encode(wav, bw)),
        }, args.repeats)

        lstm = _lstm_costs(ours, hf, -(-wav.shape[-1] // ours.hop_length), args.repeats)

        torch.set_num_threads(1)
        chunk = int(0.02 * sr)
        piece = wav[..., : int(args.stream_seconds * sr)]
        offline_codes = ours.encode(piece, bw)

        def stream():  # one live stream: encode and decode 20 ms at a time, then flush
            parts = []
            with ours.streaming(1):
                for i in range(0, piece.shape[-1], chunk):
                    c = ours.encode(piece[..., i: i + chunk], bw)
                    parts.append(c)
                    ours.decode(c)
                parts.append(ours.flush(bw))
                ours.decode(parts[-1])
            return torch.cat(parts, -1)

        # the same statistic as the offline timings: best of --repeats streams after a warm-up one
        t_stream, c_stream, streamed = best_time(stream, args.repeats)
        stream_exact = bool(torch.equal(streamed, offline_codes))
        torch.set_num_threads(threads)

    seconds = args.seconds
    enc_delay, dec_delay = ours.start_delay_frames
    write_result({
        "benchmark": "codec_speed",
        "load_avg_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "model": "EnCodec 24 kHz config (random weights), 6 kbps",
        "machine": machine_info(),
        "audio_seconds": seconds,
        "threads": threads,
        "identical_codes": same_codes,
        "max_abs_audio_diff": max_diff,
        "transformers_seconds": round(wall["transformers"], 4),
        "codeclm_seconds": round(wall["codeclm"], 4),
        "transformers_x_realtime": round(seconds / wall["transformers"], 2),
        "codeclm_x_realtime": round(seconds / wall["codeclm"], 2),
        "speedup_vs_transformers": round(wall["transformers"] / wall["codeclm"], 2),
        "speedup_vs_transformers_cpu": round(cpu["transformers"] / cpu["codeclm"], 2),
        **lstm,
        "max_speedup_vs_transformers": round(cpu["transformers"] / (cpu["codeclm"] - lstm["codeclm_lstm_seconds"]
                                                                  + lstm["lstm_floor_seconds"]), 2),
        "zero_pad_x_realtime": round(seconds / wall["zero_pad"], 2),
        "zero_pad_speedup_vs_transformers_cpu": round(cpu["transformers"] / cpu["zero_pad"], 2),
        "streaming_20ms_rtf_1thread": round(t_stream / args.stream_seconds, 3),
        "streaming_20ms_rtf_1thread_cpu": round(c_stream / args.stream_seconds, 3),
        "streaming_20ms_x_realtime_1thread_cpu": round(args.stream_seconds / c_stream, 2),
        "stream_codes_equal_offline": stream_exact,
        "algorithmic_latency_ms": round(1000 * ours.latency, 2),
        "start_delay_frames": {"encoder": enc_delay, "decoder": dec_delay},
    }, args.results)


if __name__ == "__main__":
    main()
