"""Zero-shot voice cloning quality and speed of a VoiceClone model, as one JSON line.

    python benchmarks/tts_eval.py                          # shipped default model, built-in pairs
    python benchmarks/tts_eval.py --model runs/clone/model --pairs pairs.jsonl
    python benchmarks/tts_eval.py --tiny                   # CI: 2 pairs, short texts
    python benchmarks/tts_eval.py --espeak                 # baseline: espeak-ng itself speaks the targets
    python benchmarks/tts_eval.py --espeak --espeak-codec checkpoints/codec   # ... through the codec at 3 kbps

Each pair is a reference clip (the voice to clone, with its transcript) and a different target
text; :func:`codeclm.evaluation.clone_eval.evaluate_clone` generates every pair and measures

* ``wer``: corpus WER of pocketsphinx on the outputs against the target texts; ``ref_wer`` is the
  same recogniser on the references themselves (its own floor: pocketsphinx is weak on espeak-ng
  and 8 kHz telephone speech, so read ``wer`` relative to it);
* ``sim_own`` / ``sim_other``: Resemblyzer cosine of each output to its own reference and to the
  references of the other speakers; ``sim_margin`` = the difference (about 0 when the model
  ignores the reference);
* ``rtf``: generation seconds / generated audio seconds (one untimed warm-up generation first).

Without ``--pairs`` the pairs are built here: references from the held-out Asterisk prompts
(``data/speech_real/heldout.jsonl``, from ``codeclm data real-speech``, when present; one speaker,
so at most a third of the pairs) and espeak-ng utterances of distinct synthetic speakers made with
:func:`codeclm.data.synth_speech.synth_speech` in a temporary folder; target texts come from
:func:`~codeclm.data.synth_speech.make_sentence`. Everything depends on ``--seed`` only.
``--espeak`` measures espeak-ng (voice ``en-us``, default rate) speaking the same target texts
through the same recogniser instead of a model: the WER floor the goal lines are read against
(its similarity numbers only say how far ``en-us`` is from each reference).
Needs pocketsphinx, resemblyzer (``pip install resemblyzer --no-deps webrtcvad-wheels librosa``)
and espeak-ng.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "data" / "speech_real" / "heldout.jsonl"
TINY_TEXTS = ("Thank you very much.", "Please call me today.")


def build_pairs(n: int, workdir: Path, seed: int = 0, tiny: bool = False, heldout: Path = HELDOUT) -> list:
    """``n`` :class:`ClonePair` s: Asterisk held-out references (when present) and synthetic voices."""
    import numpy as np

    from codeclm.data.manifest import read_manifest
    from codeclm.data.synth_speech import make_sentence, synth_speech
    from codeclm.evaluation.clone_eval import ClonePair

    real = []
    if heldout.is_file():
        real = [r for r in read_manifest(heldout)
                if r.text and 1.5 <= r.duration <= 8.0 and Path(r.path).is_file()]
    n_real = min(len(real), max(1, n // 3), n - 1) if real and n > 1 else 0
    refs = []  # (path, transcript, speaker)
    for i in range(n_real):  # evenly spread over the held-out prompts
        rec = real[i * len(real) // n_real]
        refs.append((rec.path, rec.text, rec.speaker or "asterisk"))
    n_synth = n - n_real
    if n_synth:
        records = synth_speech(workdir, 4 * n_synth, languages=("en-us",), seed=seed, progress=False)
        seen = set()
        for rec in records:  # distinct synthetic speakers first, then repeats if there are too few
            if rec.speaker not in seen:
                seen.add(rec.speaker)
                refs.append((rec.path, rec.text, rec.speaker))
                if len(refs) == n:
                    break
        for rec in records:
            if len(refs) == n:
                break
            if all(rec.path != r[0] for r in refs):
                refs.append((rec.path, rec.text, rec.speaker))
    pairs = []
    for i, (path, text, speaker) in enumerate(refs):
        target = TINY_TEXTS[i % len(TINY_TEXTS)] if tiny else make_sentence("en-us", np.random.default_rng([seed, 1, i]))
        pairs.append(ClonePair(str(path), text, target, "en", speaker))
    return pairs


class EspeakSpeaker:
    """espeak-ng as a "pipeline": ``generate`` speaks the text with voice en-us (the reference is
    ignored), at 24 kHz; with a ``codec`` the speech also makes a round trip through it at
    ``bandwidth`` kbps (the ceiling a codec LM trained on that codec's tokens can reach)."""

    sample_rate = 24000

    def __init__(self, codec=None, bandwidth: float | None = None):
        self.codec, self.bandwidth = codec, bandwidth

    def generate(self, text, ref_audio=None, ref_text=None, seed=0, language="en"):
        import soxr
        import torch

        from codeclm.tokenizers.align import Espeak
        from codeclm.tokenizers.normalize import normalize_text

        utt = Espeak().synth(normalize_text(text, "en"), "en-us", 175, 50)
        wav = torch.from_numpy(soxr.resample(utt.audio, utt.sample_rate, self.sample_rate).astype("float32"))[None]
        if self.codec is not None:
            with torch.inference_mode():
                wav = self.codec.decode(self.codec.encode(wav[None], self.bandwidth))[0, :, : wav.shape[-1]]
        return wav


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="VoiceClone model folder (default: the shipped one)")
    parser.add_argument("--pairs", default=None,
                        help="JSON-lines pairs file (ref, text, ref_text, language); default: built here")
    parser.add_argument("--n", type=int, default=6, help="number of built-in pairs (default 6)")
    parser.add_argument("--tiny", action="store_true", help="2 built-in pairs with short texts (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device for the model (default: cuda if available)")
    parser.add_argument("--no-warmup", action="store_true", help="time the first generation too")
    parser.add_argument("--details", action="store_true", help="include per-pair results")
    parser.add_argument("--espeak", action="store_true",
                        help="evaluate espeak-ng (en-us) speaking the targets instead of a model (the WER baseline)")
    parser.add_argument("--espeak-codec", default=None, metavar="FOLDER",
                        help="with --espeak: espeak-ng's speech through this codec (e.g. checkpoints/codec) and back, "
                             "the ceiling of a model on its tokens")
    parser.add_argument("--bandwidth", type=float, default=3.0, help="kbps of the --espeak-codec round trip (default 3)")
    parser.add_argument("--nar-bf16", choices=("auto", "on", "off"), default="auto",
                        help="the NAR under bf16 autocast on CPU: auto (where the CPU has native bf16), on, off")
    parser.add_argument("--nar-prompt-seconds", type=float, default=None, metavar="S",
                        help="the NAR reads only the prompt's last S seconds (default: the model's setting)")
    parser.add_argument("--ar-int8", choices=("auto", "on", "off"), default="auto",
                        help="the AR's decoding steps with int8 weights on CPU: auto (the model's setting), on, off")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the model's)")
    parser.add_argument("--top-k", type=int, default=None, help="top-k sampling (default: the model's)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: the model's)")
    args = parser.parse_args()

    import torch

    from codeclm.errors import CodecLMError
    from codeclm.evaluation.clone_eval import check_dependencies, evaluate_clone, read_pairs
    from codeclm.threads import machine_info

    try:
        n = 2 if args.tiny else args.n
        if n < 1:
            raise CodecLMError(f"--n must be at least 1, got {n}")
        check_dependencies()
        with tempfile.TemporaryDirectory(prefix="codeclm-tts-eval-") as tmp:
            pairs = read_pairs(args.pairs) if args.pairs else build_pairs(n, Path(tmp), args.seed, args.tiny)
            try:
                from codeclm.pipelines.clone import VoiceClone
            except ModuleNotFoundError as exc:
                if exc.name and "codeclm.pipelines.clone".startswith(exc.name):
                    raise CodecLMError("the voice cloning pipeline (codeclm.pipelines.clone) is not available") from None
                raise
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if args.espeak_codec and not args.espeak:
                raise CodecLMError("--espeak-codec needs --espeak")
            if args.espeak:
                from codeclm.codec import load_model

                codec = load_model(args.espeak_codec).eval() if args.espeak_codec else None
                pipe = EspeakSpeaker(codec, args.bandwidth if codec is not None else None)
            else:
                pipe = VoiceClone.from_pretrained(args.model)
                if hasattr(pipe.model, "nar_bf16"):  # the duration-guided model (codeclm.lm.valle_dur)
                    pipe.model.nar_bf16 = {"auto": None, "on": True, "off": False}[args.nar_bf16]
                    if args.nar_prompt_seconds is not None:
                        pipe.model.nar_prompt_seconds = args.nar_prompt_seconds
                    if args.ar_int8 != "auto":
                        pipe.model.ar_int8 = args.ar_int8 == "on"
            if hasattr(pipe, "to"):
                pipe = pipe.to(device) or pipe
            sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                          ("top_p", args.top_p)) if v is not None}
            if sampling and args.espeak:
                raise CodecLMError("--temperature/--top-k/--top-p are for a model, not --espeak")
            result = evaluate_clone(pipe, pairs, seed=args.seed, progress=True, warmup=not args.no_warmup,
                                    details=args.details, sampling=sampling)
    except CodecLMError as exc:
        sys.exit(f"tts_eval.py: error: {exc}")
    dev = getattr(pipe, "device", device)
    print(json.dumps({
        **result,
        "device": str(dev) if not str(dev).startswith("cuda") or not torch.cuda.is_available()
        else f"{dev} ({torch.cuda.get_device_name()})",
        "model": ("espeak-ng en-us" + (f" through {args.espeak_codec} at {args.bandwidth:g} kbps" if args.espeak_codec else "")
                  if args.espeak else (str(args.model) if args.model else "default")),
        "pairs": str(args.pairs) if args.pairs else ("built-in tiny" if args.tiny else "built-in"),
        "seed": args.seed,
        "sampling": sampling or "model defaults",
        "nar_bf16": args.nar_bf16,
        **({"nar_prompt_seconds": getattr(pipe.model, "nar_prompt_seconds", None),
            "ar_int8": getattr(pipe.model, "ar_int8", None)} if hasattr(pipe, "model") else {}),
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
