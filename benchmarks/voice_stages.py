"""Which stage of the duration-guided voice model loses the words? One JSON line.

    python benchmarks/voice_stages.py [--model checkpoints/voice] [--n 16] [--seed 1]

The targets are espeak-ng's own ``en-us`` renderings of :mod:`benchmarks.tts_eval`'s target texts
(the same pairs: reference voice + text), so the phoneme durations of the model's input
(:func:`codeclm.pipelines.clone_dur.espeak_durations`) are exactly those of the recording. The
same recogniser (pocketsphinx on the sentences' vocabulary) scores four versions of each:

* ``espeak``: the rendering itself (the recogniser's floor on this voice);
* ``codec``: its round trip through the model's codec at the model's codebooks;
* ``nar``: the rendering's own first codebook, the NAR filling the others from the reference's
  prompt (:meth:`~codeclm.lm.valle_dur.DurValle.fill_nar`): what the NAR loses;
* ``full``: the AR generating the first codebook with the same durations, then the NAR: what the
  AR loses on top.

``codec`` vs ``espeak`` is the codec's cost, ``nar`` vs ``codec`` the NAR's, ``full`` vs ``nar`` the AR's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a VoiceClone folder with the duration-guided model (default: shipped)")
    p.add_argument("--n", type=int, default=16, help="pairs")
    p.add_argument("--seed", type=int, default=1, help="pairs and sampling seed (as tts_eval.py)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "voice_stages.jsonl"), help="JSON-lines file ('' for none)")
    args = p.parse_args(argv)

    import soxr
    import torch

    from codeclm.asr import normalize_words, transcribe, word_edit_distance
    from codeclm.lm.valle_dur import DurValle
    from codeclm.pipelines.clone import VoiceClone
    from codeclm.pipelines.clone_dur import ESPEAK_RATE, ESPEAK_VOICE, espeak_durations
    from codeclm.threads import machine_info, set_threads
    from codeclm.tokenizers.align import Espeak
    from codeclm.tokenizers.normalize import normalize_text
    from timing import write_result
    from tts_eval import build_pairs

    set_threads(args.threads)
    t0 = time.perf_counter()
    pipe = VoiceClone.from_pretrained(args.model or "checkpoints/voice")
    model, codec, sr = pipe.model, pipe.codec, pipe.sample_rate
    if not isinstance(model, DurValle):
        sys.exit("voice_stages.py: error: the model is not the duration-guided VALL-E")
    c = model.config
    stages = ("espeak", "codec", "nar", "full")
    edits, words = dict.fromkeys(stages, 0), 0
    gen = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = build_pairs(args.n, Path(tmp), args.seed)
        for pair in pairs:
            utt = Espeak().synth(normalize_text(pair.text, "en"), ESPEAK_VOICE, ESPEAK_RATE, 50)
            wav = torch.from_numpy(soxr.resample(utt.audio, utt.sample_rate, sr).astype("float32"))
            tokens, dur = espeak_durations(pair.text, c.frame_rate)
            T = int(sum(dur))
            ids = torch.tensor(pipe.vocab.encode(tokens, "en"))
            durations = torch.tensor([0] + [int(x) for x in dur])  # the language token has no frames
            with torch.inference_mode():
                codes = codec.encode(wav[None, None], bandwidth=None)[0, : c.n_q]
                codes = torch.cat([codes, codes[:, -1:].expand(-1, max(0, T - codes.shape[1]))], 1)[:, :T]
                prompt = pipe.prepare_voice(pair.ref, pair.ref_text).codes
                nar = model.fill_nar(ids, durations, prompt, codes[0])
                full = model.generate(ids, durations, prompt, generator=gen)
                outs = {"espeak": wav[None], **{k: codec.decode(x[None])[0].float()
                                                for k, x in (("codec", codes), ("nar", nar), ("full", full))}}
            target = normalize_words(pair.text, "en")
            words += len(target)
            for k, w in outs.items():
                edits[k] += word_edit_distance(target, normalize_words(transcribe(w, sr), "en"))
    wer = {k: round(edits[k] / max(words, 1), 4) for k in stages}
    out = {"benchmark": "voice_stages", "model": args.model or "checkpoints/voice", "n": len(pairs), "seed": args.seed,
           "words": words, "wer": wer,
           "loss": {"codec": round(wer["codec"] - wer["espeak"], 4), "nar": round(wer["nar"] - wer["codec"], 4),
                    "ar": round(wer["full"] - wer["nar"], 4)},
           "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1)}
    write_result(out, args.results)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
