"""Aligned speech for the duration-guided VALL-E: espeak-ng utterances, their codec codes and the
phoneme of every codec frame, in one folder.

    python -m codeclm.data.aligned_speech ~/codeclm-data/data/speech_aligned --speakers 320 \
        --per-speaker 13 --seed 0 --codec checkpoints/codec --bandwidth 3

Each utterance is spoken by the espeak-ng library (:class:`codeclm.tokenizers.align.Espeak`), so
its phoneme spans are exact (espeak-ng's phoneme events). The audio is resampled to the codec's
rate and encoded; the frame alignment maps every codec frame to its phoneme token. The folder holds

    manifest.jsonl     one record per utterance: text, speaker, voice, rate, pitch, n_frames,
                       tokens (phoneme tokens), durations (frames per token, summing to n_frames)
    codes.safetensors  "codes" [K, total frames] int16 (utterances concatenated in manifest order)
    info.json          codec identity, bandwidth, frame rate, n_q, the held-out voices

Speakers are (voice, variant, pitch, rate) draws over the English espeak-ng voices and every
variant, except the voices that ``benchmarks/tts_eval.py`` evaluates on (:data:`HELD_OUT`): the
whole ``en-us-nyc`` voice and the ``en-us`` variants its first 12 synthetic pairs use.
Deterministic in ``seed``. Texts: :func:`codeclm.data.synth_speech.make_sentence`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from codeclm.errors import CodecLMError

__all__ = ["HELD_OUT", "VOICES", "build_aligned_speech", "held_out_speaker", "load_aligned"]

VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# benchmarks/tts_eval.py (seed 0, up to 12 synthetic pairs) speaks with these voice+variant pairs
HELD_OUT = ("en-us-nyc", "en-us+klatt2", "en-us+f3", "en-us+f1", "en-us+f2", "en-us+m4")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+m8", "+f1", "+f2", "+f3", "+f4", "+f5",
            "+klatt", "+klatt2", "+klatt3", "+klatt4", "+klatt5", "+klatt6", "+croak", "+adam", "+Alex",
            "+Alicia", "+Andrea", "+Andy", "+Annie", "+antonio", "+aunty", "+belinda", "+benjamin", "+boris",
            "+caleb", "+david", "+Denis", "+Diogo", "+ed", "+edward", "+edward2", "+Gene", "+Gene2", "+gustave",
            "+Henrique", "+Hugo", "+iven", "+iven2", "+iven3", "+iven4", "+Jacky", "+john", "+kaukovalta", "+Lee",
            "+linda", "+marcelo", "+Marco", "+Mario", "+max", "+Michael", "+michel", "+miguel", "+Mike", "+Mr",
            "+Nguyen", "+pablo", "+paul", "+pedro", "+quincy", "+rob", "+robert", "+steph", "+steph2",
            "+steph3", "+Storm", "+zac", "+anika", "+AnxiousAndy", "+grandpa", "+grandma", "+norbert",
            "+sandro", "+shelby", "+travis", "+victor")


def held_out_speaker(voice: str) -> bool:
    """True for a ``voice+variant`` that the evaluation uses (never trained on)."""
    base = voice.split("+")[0]
    return base == "en-us-nyc" or voice in HELD_OUT


def _speakers(n: int, rng: np.random.Generator) -> list[dict]:
    """Half of the speakers on ``en-us`` (the accent the model speaks at inference), half on the others."""
    us = [VOICES[0] + var for var in VARIANTS if not held_out_speaker(VOICES[0] + var)]
    other = [v + var for v in VOICES[1:] for var in VARIANTS if not held_out_speaker(v + var)]
    out = []
    for _ in range(n):
        pool = us if rng.random() < 0.5 else other
        out.append({"voice": pool[int(rng.integers(len(pool)))], "pitch": int(rng.integers(30, 71)),
                    "rate": int(rng.integers(140, 196))})
    return out


def build_aligned_speech(out_dir: str | Path, speakers: int = 320, per_speaker: int = 13, seed: int = 0,
                         codec_folder: str | Path = "checkpoints/codec", bandwidth: float = 3.0,
                         max_seconds: float = 9.0, progress: bool = True) -> int:
    """Write the folder (see the module docstring); returns the number of utterances."""
    import soxr
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from codeclm.codec import load_model
    from codeclm.data.synth_speech import make_sentence
    from codeclm.tokenizers.align import Espeak, durations_from_alignment
    from codeclm.tokenizers.normalize import normalize_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codec = load_model(codec_folder).eval()
    eng = Espeak()
    rng = np.random.default_rng([seed, 7])
    spk = _speakers(speakers, rng)
    records, codes = [], []
    bar = tqdm(total=speakers * per_speaker, desc="aligned speech", unit="utt", disable=not progress)
    for s, sp in enumerate(spk):
        sid = f"{sp['voice']}@p{sp['pitch']}r{sp['rate']}"
        for u in range(per_speaker):
            urng = np.random.default_rng([seed, s, u])
            text = make_sentence("en-us" if urng.random() < 0.5 else "en-gb", urng)
            rate = int(sp["rate"] + urng.integers(-8, 9))
            utt = eng.synth(normalize_text(text, "en"), sp["voice"], rate, sp["pitch"])
            bar.update(1)
            if len(utt.audio) / utt.sample_rate > max_seconds or not np.isfinite(utt.audio).all():
                continue
            wav = soxr.resample(utt.audio, utt.sample_rate, codec.sample_rate).astype(np.float32)
            with torch.no_grad():
                c = codec.encode(torch.from_numpy(wav)[None, None], bandwidth=bandwidth)[0]
            n = c.shape[-1]
            align = utt.frame_alignment(n, float(codec.frame_rate))
            dur = durations_from_alignment(align, len(utt.tokens))
            records.append({"id": f"a{seed}_{s:04d}_{u:02d}", "text": text, "speaker": sid, "voice": sp["voice"],
                            "rate": rate, "pitch": sp["pitch"], "n_frames": int(n), "tokens": utt.tokens,
                            "durations": [int(x) for x in dur]})
            codes.append(c.to(torch.int16))
    bar.close()
    if not records:
        raise CodecLMError("no utterance was made")
    save_file({"codes": torch.cat(codes, 1).contiguous()}, str(out / "codes.safetensors"))
    (out / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                        encoding="utf-8")
    info = {"codec": codec.identity(), "bandwidth": bandwidth, "frame_rate": float(codec.frame_rate),
            "sample_rate": int(codec.sample_rate), "n_q": int(codes[0].shape[0]), "card": int(codec.cardinality),
            "held_out": list(HELD_OUT), "seed": seed, "speakers": speakers, "per_speaker": per_speaker}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return len(records)


def load_aligned(folder: str | Path) -> tuple[list[dict], list[torch.Tensor], dict]:
    """``(records, codes per record [K, n_frames] long, info)`` of a folder made above."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("manifest.jsonl", "codes.safetensors", "info.json"):
        if not (folder / name).is_file():
            raise CodecLMError(f"{folder}: not an aligned-speech folder (no {name}); make it with "
                               "python -m codeclm.data.aligned_speech")
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    allc = load_file(str(folder / "codes.safetensors"))["codes"]
    codes, pos = [], 0
    for r in records:
        codes.append(allc[:, pos: pos + r["n_frames"]].long())
        pos += r["n_frames"]
    if pos != allc.shape[1]:
        raise CodecLMError(f"{folder}: codes.safetensors holds {allc.shape[1]} frames, the manifest {pos}")
    return records, codes, json.loads((folder / "info.json").read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--speakers", type=int, default=320)
    p.add_argument("--per-speaker", type=int, default=13)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec", default="checkpoints/codec")
    p.add_argument("--bandwidth", type=float, default=3.0)
    a = p.parse_args(argv)
    try:
        torch.set_num_threads(1)
        n = build_aligned_speech(a.out_dir, a.speakers, a.per_speaker, a.seed, a.codec, a.bandwidth)
    except CodecLMError as exc:
        sys.exit(f"aligned_speech: error: {exc}")
    print(f"{n} utterances -> {a.out_dir}")


if __name__ == "__main__":
    main()
