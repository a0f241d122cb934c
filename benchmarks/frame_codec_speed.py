"""Frame codec speed on one thread: offline encode + decode, and live streaming in 20 ms chunks.

Times :class:`codeclm.codec.frame.FrameCodec` (a trained folder with ``--model``, else the default
config with random weights: the same work) at ``--bandwidth``: offline ``decode(encode(wav))`` of
``--seconds`` of audio, and a live stream of ``--stream-seconds`` fed one 20 ms chunk (one frame)
per call, ``with codec.streaming(1): codec.decode(codec.encode(chunk))``, flushed at the end. Both
are exact (the stream's codes and audio must equal offline's: checked, and reported).

The exact path's GEMM kernel depends on the weights (``codeclm.codec.layers.PackedLinear``):
float16 numbers (a float16 folder, what is shipped) take FBGEMM's float16-weight kernel, other
float32 weights oneDNN's; ``--weights`` picks the random model's (``float16``: rounded to float16
numbers, as a float16 folder loads), and the JSON line says which kernels ran (``kernels``).

``--baseline REV`` also builds the FrameCodec class of ``codeclm/codec/frame.py`` at that git
revision (its other modules: this checkout's), loads the same weights and times it interleaved
with this one (so a busy machine slows both alike): the before/after of a change. Speeds are
``x real time`` (audio seconds per second) on wall-clock time and on this process's CPU time
(``*_cpu``: far less sensitive to other processes' load). Prints one JSON line and appends it to
``benchmarks/results/frame_codec_speed.jsonl`` (``--results ''`` for none).

    python benchmarks/frame_codec_speed.py [--model FOLDER] [--baseline REV] [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import interleaved  # noqa: E402  (this folder is on sys.path when run as a script)


def baseline_class(rev: str):
    """``FrameCodec`` as defined by ``codeclm/codec/frame.py`` at git revision ``rev``."""
    root = os.path.dirname(HERE)
    source = subprocess.run(["git", "show", f"{rev}:codeclm/codec/frame.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"frame_at_{rev.replace('/', '_')}", f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    os.unlink(f.name)
    return module.FrameCodec


def test_signal(seconds: float, sr: int) -> torch.Tensor:
    """A gliding tone in noise (speech-like level), ``[1, 1, T]``."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * sr)) / sr
    tone = 0.2 * torch.sin(2 * math.pi * 180 * t * (1 + 0.3 * torch.sin(2 * math.pi * 0.5 * t)))
    return (tone + 0.02 * torch.randn(t.shape[0], generator=g))[None, None]


def runners(codec, wav: torch.Tensor, piece: torch.Tensor, bw: float):
    hop = codec.hop_length
    chunk = int(round(0.02 * codec.sample_rate))

    def offline():
        return codec.decode(codec.encode(wav, bw))

    def stream():
        codes, audio = [], []
        with codec.streaming(1):
            for i in range(0, piece.shape[-1], chunk):
                codes.append(codec.encode(piece[..., i: i + chunk], bw))
                audio.append(codec.decode(codes[-1]))
            codes.append(codec.flush(bw))
            audio.append(codec.decode(codes[-1]))
        return torch.cat(codes, -1), torch.cat(audio, -1)

    return offline, stream


def main() -> None:
    from codeclm.codec.frame import FrameCodec, FrameCodecConfig
    from codeclm.threads import cpu_model, machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a FrameCodec folder (default: random weights, default config)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio encoded + decoded offline")
    parser.add_argument("--stream-seconds", type=float, default=3.0, help="audio streamed in 20 ms chunks")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--weights", choices=["float16", "float32"], default="float16",
                        help="random model only: weights rounded to float16 numbers (a float16 folder) or not")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default=None, metavar="REV", help="also time frame.py at this git revision")
    parser.add_argument("--results", default=os.path.join(HERE, "results", "frame_codec_speed.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.model:
        codec = FrameCodec.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        codec = FrameCodec(FrameCodecConfig()).eval()
        with torch.no_grad():  # spread codebooks (an untrained one is all zeros)
            for layer in codec.quantizer.layers:
                layer.embed.normal_()
            if args.weights == "float16":
                for t in codec.state_dict().values():
                    if t.is_floating_point():
                        t.copy_(t.half().float())
    sr = codec.sample_rate
    wav = test_signal(args.seconds, sr)
    piece = test_signal(args.stream_seconds, sr)
    bw = args.bandwidth
    contenders = {"new": codec}
    if args.baseline:
        old = baseline_class(args.baseline)(codec.config)
        old.load_state_dict(codec.state_dict())
        contenders["baseline"] = old.eval()

    fns, checks = {}, {}
    with torch.inference_mode():
        for name, model in contenders.items():
            offline, stream = runners(model, wav, piece, bw)
            ref_codes = model.encode(piece, bw)
            ref_audio = model.decode(ref_codes)
            codes, audio = stream()
            checks[name] = bool(torch.equal(codes, ref_codes) and torch.equal(audio, ref_audio))
            fns[f"{name}_offline"], fns[f"{name}_stream"] = offline, stream
        wall, cpu = interleaved(fns, args.rounds)

    def speeds(name: str) -> dict:
        return {"offline_x_realtime": round(args.seconds / wall[f"{name}_offline"], 2),
                "offline_x_realtime_cpu": round(args.seconds / cpu[f"{name}_offline"], 2),
                "streaming_20ms_x_realtime": round(args.stream_seconds / wall[f"{name}_stream"], 2),
                "streaming_20ms_x_realtime_cpu": round(args.stream_seconds / cpu[f"{name}_stream"], 2),
                "stream_equals_offline": checks[name]}

    from codeclm.codec.layers import pack_linear

    with torch.inference_mode():
        kinds = [pack_linear(m.weight, m.bias).kind for m in codec.modules() if isinstance(m, torch.nn.Linear)]
    result = {"benchmark": "frame_codec_speed", "cpu_model": cpu_model(), "machine": machine_info(),
              "model": args.model or f"default config, random {args.weights} weights", "bandwidth_kbps": bw,
              "threads": 1, "kernels": {k: kinds.count(k) for k in sorted(set(kinds))},
              "offline_seconds": args.seconds, "stream_seconds": args.stream_seconds, "rounds": args.rounds,
              **speeds("new")}
    if args.baseline:
        result["baseline"] = {"rev": args.baseline, **speeds("baseline")}
        result["streaming_speedup_cpu"] = round(cpu["baseline_stream"] / cpu["new_stream"], 2)
        result["offline_speedup_cpu"] = round(cpu["baseline_offline"] / cpu["new_offline"], 2)
    line = json.dumps(result)
    print(line)
    if args.results:
        os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
        with open(args.results, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
