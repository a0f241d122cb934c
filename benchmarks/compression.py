"""Compression benchmark: codeclm (.cclm) against Opus at the same bitrates, speech and music.

For each signal and bandwidth it compresses a file with ``compress_file``, decompresses it with
``decompress_file`` and prints one JSON line with: the raw code bitrate (``n_q * log2(bins)``
bits per frame), the entropy-coded and whole-file bitrates, the saving of the entropy coder,
encode/decode speed (x real time, including file I/O and entropy coding), the entropy coder's own
throughput (frames/s), and quality (SI-SDR, mel distance, STOI) side by side with Opus (libopus
through ffmpeg) at the same target bitrate.

Signals: speech from ``espeak-ng`` and music rendered by ``fluidsynth`` (``codeclm.data``); a
synthetic harmonic signal replaces the music when fluidsynth or a soundfont is missing. Or pass
your own files with ``--speech``/``--music``.

    apt-get install espeak-ng ffmpeg fluidsynth timgm6mb-soundfont
    python benchmarks/compression.py [--model FOLDER] [--bandwidths 1.5 3 6 12] [--seconds 10]

Without ``--model`` (and without the shipped ``checkpoints/codec``) a *random* codec with the
default configuration is used, its codebooks k-means-initialised on the signals: speeds and the
format are real, but the quality numbers and the entropy-coding savings are meaningless.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from codeclm.audio import load_audio, save_audio
from codeclm.codec import Codec, CodecConfig, load_model
from codeclm.compression import compress_file, decompress_file, read_info
from codeclm.compression.entropy import AdaptiveCodeModel
from codeclm.errors import CodecLMError

SPEECH_TEXT = ("The quick brown fox jumps over the lazy dog. Audio codecs turn sound into a small stream of "
               "numbers, and an entropy coder squeezes those numbers further. Thank you for listening to this "
               "benchmark, which compares a neural codec with Opus at the same bitrates.")


def speech(folder: Path, seconds: float) -> Path:
    """espeak-ng speech, repeated to ``seconds``."""
    if shutil.which("espeak-ng") is None:
        raise CodecLMError("espeak-ng not found: apt-get install espeak-ng (or pass --speech FILE)")
    raw = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), SPEECH_TEXT], check=True, capture_output=True)
    wav, sr = load_audio(raw)
    reps = int(np.ceil(seconds * sr / wav.shape[-1]))
    return save_audio(folder / "speech.wav", wav.repeat(1, reps)[:, : int(seconds * sr)], sr)


def music(folder: Path, seconds: float) -> tuple[Path, str]:
    """A fluidsynth-rendered piece, else a synthetic harmonic signal."""
    try:
        from codeclm.data.synth_music import synth_music

        record = synth_music(folder / "music", 1, duration=seconds, seed=0, progress=False)[0]
        return Path(record.path), "music (fluidsynth)"
    except (CodecLMError, ImportError) as exc:
        print(f"# music: {exc}; using a synthetic harmonic signal", file=sys.stderr)
    sr = 24000
    t = torch.arange(int(seconds * sr)) / sr
    notes = 220 * 2 ** (torch.tensor([0, 4, 7, 12, 7, 4]) / 12)
    f0 = notes[(t * 2).long() % len(notes)]
    wav = sum(0.2 / k * torch.sin(2 * np.pi * k * torch.cumsum(f0, 0) / sr) for k in range(1, 8))
    return save_audio(folder / "music.wav", (wav * torch.exp(-3 * (t % 0.5)))[None], sr), "music (synthetic)"


def pick_codec(model: str | None, signals: list[Path]) -> tuple[Codec, bool]:
    """The given or shipped codec; else a random default-size one, codebooks k-means'd on ``signals``."""
    try:
        return load_model(model).eval(), False  # the shipped default is a FrameCodec, not a Codec
    except CodecLMError as exc:
        if model is not None:
            raise
        warnings.warn(f"{exc}: using a RANDOM codec, quality numbers and savings are meaningless", stacklevel=2)
    torch.manual_seed(0)
    codec = Codec(CodecConfig(kmeans_iters=10)).train()
    wav = torch.cat([load_audio(p, codec.sample_rate, codec.channels)[0] for p in signals], -1)
    with torch.no_grad():
        codec(wav[None])
    return codec.eval(), True


def quality(ref: torch.Tensor, est: torch.Tensor, sr: int, metrics) -> dict:
    out = {"si_sdr": round(metrics.si_sdr(ref, est), 2), "mel": round(metrics.mel_distance(ref, est, sr), 3)}
    try:
        out["stoi"] = round(metrics.stoi_score(ref, est, sr), 3)
    except CodecLMError:  # pystoi missing
        out["stoi"] = None
    return out


def entropy_throughput(codec: Codec, wav: torch.Tensor, bandwidth: float, chunk: int) -> dict:
    """Frames/s of the entropy coder alone on this signal's codes."""
    codes = codec.encode(wav[None], bandwidth)[0].numpy()
    n_q, frames = codes.shape
    enc, dec = AdaptiveCodeModel(n_q, codec.cardinality), AdaptiveCodeModel(n_q, codec.cardinality)
    start = time.perf_counter()
    payloads = [enc.encode_chunk(codes[:, i: i + chunk]) for i in range(0, frames, chunk)]
    mid = time.perf_counter()
    for i, p in zip(range(0, frames, chunk), payloads):
        dec.decode_chunk(p, min(chunk, frames - i))
    end = time.perf_counter()
    return {"entropy_encode_fps": round(frames / (mid - start)), "entropy_decode_fps": round(frames / (end - mid))}


def run(args) -> None:
    from codeclm import metrics  # another worker's module: imported lazily, checked below

    try:
        from codeclm.baselines import opus_available, opus_roundtrip

        use_opus = not args.no_opus and opus_available()
    except ImportError:
        use_opus = False
    if not use_opus and not args.no_opus:
        print("# Opus baseline skipped: needs ffmpeg with libopus (apt-get install ffmpeg)", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="codeclm-bench-") as tmp:
        tmp = Path(tmp)
        signals = [(Path(args.speech) if args.speech else speech(tmp, args.seconds), "speech")]
        if args.music:
            signals.append((Path(args.music), "music"))
        else:
            signals.append(music(tmp, args.seconds))
        codec, random_model = pick_codec(args.model, [p for p, _ in signals])
        model_dir = codec.save_pretrained(tmp / "model")
        sr = codec.sample_rate
        for path, name in signals:
            ref, _ = load_audio(path, sr, codec.channels)
            duration = ref.shape[-1] / sr
            for bw in args.bandwidths:
                cclm, out = tmp / f"{name[:5]}_{bw}.cclm", tmp / f"{name[:5]}_{bw}.wav"
                start = time.perf_counter()
                stats = compress_file(path, cclm, model=model_dir, bandwidth=bw)
                mid = time.perf_counter()
                decompress_file(cclm, out, model=model_dir, subtype="FLOAT")
                end = time.perf_counter()
                est, _ = load_audio(out)
                row = {
                    "signal": name, "bandwidth_kbps": bw, "seconds": round(duration, 2),
                    "model": codec.config.name + (" (random)" if random_model else ""),
                    "codebooks": stats.num_codebooks, "raw_kbps": round(stats.raw_kbps, 3),
                    "coded_kbps": round(stats.coded_kbps, 3), "file_kbps": round(read_info(cclm)["file_kbps"], 3),
                    "entropy_saving_pct": round(100 * stats.saving, 1),
                    "encode_xrt": round(duration / (mid - start), 1), "decode_xrt": round(duration / (end - mid), 1),
                    **entropy_throughput(codec, ref, bw, max(1, round(codec.frame_rate))),
                    "codeclm": quality(ref, est, sr, metrics),
                }
                if use_opus:
                    decoded, kbps = opus_roundtrip(ref, sr, bw)
                    row["opus"] = {"kbps": round(kbps, 3), **quality(ref, decoded, sr, metrics)}
                print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="codec folder (default: checkpoints/codec, else random)")
    parser.add_argument("--bandwidths", type=float, nargs="+", default=[1.5, 3.0, 6.0, 12.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated signals")
    parser.add_argument("--speech", default=None, help="speech file instead of espeak-ng")
    parser.add_argument("--music", default=None, help="music file instead of fluidsynth")
    parser.add_argument("--no-opus", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    try:
        run(args)
    except CodecLMError as exc:
        sys.exit(f"compression benchmark: {exc}")


if __name__ == "__main__":
    main()
