"""Does a text-to-music model follow its caption? One JSON line (also appended to results/).

    python benchmarks/music_adherence.py [--model FOLDER] [--melody] [--long]   # default checkpoints/music
    python benchmarks/music_adherence.py --tiny                                 # CI: plumbing only

Captions are built exactly like the synthetic corpus's (``codeclm.data.synth_music``: mood, style,
key, mode, tempo, lead / chords / bass instruments, drums) from pieces planned with a seed the
training corpus did not use (``--heldout-seed``), then varied ONE attribute at a time:

* tempo: each base piece (styles with drums) at ``--tempos`` BPM (default 80-140, inside one
  octave) -> librosa's beat tracker, its estimate folded into [80, 160) BPM (the tracker's octave
  is ambiguous: a 60 bpm rock piece with eighth-note hi-hats reads as 120, so a sweep across
  more than an octave cannot be scored even on the corpus's own renders); Spearman rank
  correlation of asked vs estimated BPM (goal >= 0.6);
* mode: each base piece in major and in minor (same tonic), generated with ``--mode-seeds``
  seeds -> key-profile estimator; accuracy of the mode read for the asked tonic over all of them
  (goal >= 0.8; one clip's call is noisy, so the seeds), beside the free 24-key estimate's mode and key;
* instrument: each base piece with each lead family its style uses, generated with
  ``--instrument-seeds`` seeds -> the lead-family classifier (``checkpoints/music_eval``) choosing
  among that style's families; accuracy over all of them and its ratio to chance (goal >= 2x).

The mood word follows the corpus rule (drawn from mode and bpm >= 110), so it changes with the
mode or across 110 bpm as in training. Every caption is checked against the training corpus's
captions (``--train-corpus SEED:N,...``, the ``synth-music`` runs that made it: default the
shipped model's ``0:200,7:800,11:1000,13:1000,17:1000,19:1000``) and dropped if it occurs there (``captions_in_training`` counts
them; the melodies are new renders anyway).

Every clip's tonality scores (spectral flatness, spectral-peak harmonicity, onset peakiness and
rate, chroma clarity) are reported beside the training corpus's range (``reference.json`` next to
the classifier) and white / brown noise. ``--oracle`` (default on when fluidsynth is installed)
renders the same pieces with the corpus's renderer and runs the same estimators on them: the
yardstick's ceiling on audio that follows the caption perfectly.

``--melody`` (a melody model): held-out pieces rendered by fluidsynth are the melody references;
dominant-pitch-class agreement with the reference, with vs without it (same seed).
``--long``: one ``--long-duration`` s generation per long caption (sliding windows,
``codeclm.pipelines.longform``); the scores of seconds 30-40 vs 0-10.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codeclm.evaluation import music_eval as me

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # timing.py beside it, also when loaded by path
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from timing import write_result  # noqa: E402

TONALITY_KEYS = me.TONALITY_KEYS


# -- the captions ----------------------------------------------------------------------------------
def build_cases(args, train_caps: set[str]) -> tuple[dict, int]:
    """{"tempo": [(piece, asked)], "mode": [...], "instrument": [(piece, family, among)]}, dropped."""
    from codeclm.data.synth_music import STYLES

    pool = me.corpus_pieces(args.heldout_seed, 400)
    dropped = 0

    def keep(piece) -> bool:
        nonlocal dropped
        if piece.caption in train_caps:
            dropped += 1
            return False
        return True

    cases = {"tempo": [], "mode": [], "instrument": []}
    drummed = [p for p in pool if STYLES[p.style]["drums"]]
    for base in drummed[: args.n_tempo]:
        for bpm in args.tempos:
            piece = me.vary(base, bpm=int(bpm))
            if keep(piece):
                cases["tempo"].append((piece, int(bpm)))
    for base in pool[args.n_tempo: args.n_tempo + args.n_mode]:
        for mode in ("major", "minor"):
            piece = me.vary(base, mode=mode)
            if keep(piece):
                cases["mode"].append((piece, mode))
    bases, seen_styles = [], {}
    for p in pool:  # bases from several styles that have >= 2 lead families, round robin
        fams = me.lead_choices(p.style)
        if len(fams) >= 2 and seen_styles.get(p.style, 0) < (args.n_instrument + 3) // 4:
            bases.append(p)
            seen_styles[p.style] = seen_styles.get(p.style, 0) + 1
        if len(bases) >= args.n_instrument:
            break
    for base in bases:
        among = me.lead_choices(base.style)
        for fam in among:
            programs = [q for q in STYLES[base.style]["lead"] if me.family_of(q) == fam and q != base.chords]
            if not programs:
                continue
            piece = me.vary(base, lead=programs[0])
            if keep(piece):
                cases["instrument"].append((piece, fam, among))
    return cases, dropped


# -- generation ------------------------------------------------------------------------------------
def generate_all(pipe, captions: list[str], duration: float, seed: int, batch: int, guidance: float,
                 melody=None) -> tuple[list[torch.Tensor], float]:
    out, t = [], time.perf_counter()
    for i in range(0, len(captions), batch):
        kw = {} if melody is None else {"melody": melody[i: i + batch]}
        out += pipe.generate(captions[i: i + batch], duration=duration, seed=seed, guidance_scale=guidance, **kw)
    return out, time.perf_counter() - t


def tiny_pipeline():
    """A random tiny TextToMusic (caption tokenizer, 1-layer LM, melody conditioner, tiny codec)."""
    from codeclm.codec import Codec, CodecConfig
    from codeclm.lm.config import LMConfig
    from codeclm.lm.melody import MelodyConditioner
    from codeclm.lm.text_encoder import BuiltinTextConditioner
    from codeclm.lm.transformer import TokenLM
    from codeclm.pipelines import TextToMusic
    from codeclm.tokenizers.text import CaptionTokenizer, train_caption_tokenizer

    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=32,
                              target_bandwidths=[4.5, 9.0], kmeans_init=False, lstm_layers=1,
                              sample_rate=24000)).eval()
    with tempfile.TemporaryDirectory() as d:
        caps = [p.caption for p in me.corpus_pieces(0, 40)]
        tok = CaptionTokenizer(train_caption_tokenizer(caps, Path(d) / "spm", vocab_size=60))
    text = BuiltinTextConditioner(tok, dim=16, num_layers=1, num_heads=2)
    lm = TokenLM(LMConfig(n_q=2, card=32, dim=16, num_heads=2, num_layers=1, cross_attention=True,
                          max_seq_len=400, pattern="delay"))
    melody = MelodyConditioner(dim=16)
    return TextToMusic(lm, codec, text, melody=melody)


# -- scoring ---------------------------------------------------------------------------------------
def _r(x, n=4):
    return None if x is None else round(float(x), n)


def score(cases: dict, audio: dict, sr: int, clf) -> dict:
    """Attribute estimates and adherence numbers of one set of clips (generated or oracle)."""
    res = {}
    asked = [a for _, a in cases["tempo"]]
    est = [me.fold_tempo(me.estimate_tempo(w, sr)) for w in audio["tempo"]]
    ratio = np.array(est) / np.maximum(np.array(asked, dtype=float), 1)
    res["tempo"] = {"spearman": _r(me.spearman(asked, est)) if asked else None,
                    "within_8pct": _r(np.mean(np.abs(ratio - 1) < 0.08)) if asked else None,
                    "median_bpm_by_asked": {str(a): _r(np.median([e for aa, e in zip(asked, est) if aa == a]), 1)
                                            for a in sorted(set(asked))}}
    res["mode"] = score_mode(cases["mode"], audio["mode"], sr)
    res["instrument"] = score_instrument(cases["instrument"], audio["instrument"], sr, clf)
    ton = [me.tonality(w, sr) for group in ("tempo", "mode", "instrument") for w in audio[group]]
    res["tonality"] = summarize(ton)
    res["_tonality_rows"] = ton
    return res


def score_mode(cases: list, audio: list, sr: int) -> dict:
    """Mode (and key) read back from clips of ``cases`` ``[(piece, asked mode)]``."""
    keys = [me.estimate_key(w, sr) for w in audio]
    if not keys:
        return {"accuracy": None, "accuracy_free_key": None, "key_accuracy": None, "minor_share": None}
    return {"accuracy": _r(np.mean([k.mode_given_tonic(p.tonic) == m for k, (p, m) in zip(keys, cases)])),
            "accuracy_free_key": _r(np.mean([k.mode == m for k, (_, m) in zip(keys, cases)])),
            "key_accuracy": _r(np.mean([(k.tonic, k.mode) == (p.tonic, m) for k, (p, m) in zip(keys, cases)])),
            "minor_share": _r(np.mean([k.mode_given_tonic(p.tonic) == "minor" for k, (p, _) in zip(keys, cases)]))}


def score_instrument(cases: list, audio: list, sr: int, clf) -> dict:
    """The lead family read back from clips of ``cases`` ``[(piece, asked family, families)]``."""
    preds = [clf.predict(w, sr, among) for w, (_, _, among) in zip(audio, cases)]
    hits = [pr == fam for pr, (_, fam, _) in zip(preds, cases)]
    if not hits:
        return {"accuracy": None, "chance": None, "ratio_to_chance": None, "predicted": {}}
    acc, chance = float(np.mean(hits)), float(np.mean([1 / len(among) for _, _, among in cases]))
    return {"accuracy": _r(acc), "chance": _r(chance), "ratio_to_chance": _r(acc / chance, 3),
            "predicted": {f: int(sum(p == f for p in preds)) for f in sorted(set(preds))}}


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {}
    return {k: {"p5": _r(np.percentile([r[k] for r in rows], 5)), "median": _r(np.median([r[k] for r in rows])),
                "p95": _r(np.percentile([r[k] for r in rows], 95))} for k in TONALITY_KEYS}


def _inside(row: dict, ref: dict, key: str) -> bool:
    return ref[key]["p5"] <= row[key] <= ref[key]["p95"]


def in_range(rows: list[dict], ref: dict) -> float | None:
    """Share of clips whose every tonality score lies inside the corpus's [p5, p95] range (about
    0.6 for the corpus's own clips: five scores, each inside its range for 90 % of them)."""
    if not rows or not ref:
        return None
    return _r(np.mean([all(_inside(r, ref, k) for k in TONALITY_KEYS if k in ref) for r in rows]))


def in_range_by_score(rows: list[dict], ref: dict) -> dict | None:
    """Per tonality score, the share of clips inside the corpus's [p5, p95] range."""
    if not rows or not ref:
        return None
    return {k: _r(np.mean([_inside(r, ref, k) for r in rows])) for k in TONALITY_KEYS if k in ref}


def oracle_summary(res: dict, reference: dict) -> dict:
    rows = res.pop("_tonality_rows")
    return {"tempo_spearman": res["tempo"]["spearman"], "tempo_within_8pct": res["tempo"]["within_8pct"],
            "mode_accuracy": res["mode"]["accuracy"], "mode_accuracy_free_key": res["mode"]["accuracy_free_key"],
            "instrument_accuracy": res["instrument"]["accuracy"],
            "instrument_ratio_to_chance": res["instrument"]["ratio_to_chance"],
            "tonality_in_corpus_range": in_range(rows, reference.get("corpus")),
            "tonality_in_codec_corpus_range": in_range(rows, reference.get("corpus_codec"))}


def codec_round_trip(pipe, wav: torch.Tensor) -> torch.Tensor:
    """``wav [C, N]`` at 24 kHz through the pipeline's codec, keeping the LM's codebooks."""
    from codeclm.pipelines.longform import encode_clip

    codes = encode_clip(pipe, wav, me.EVAL_SR)
    n = int(round(wav.shape[-1] * pipe.sample_rate / me.EVAL_SR))
    return pipe._decode(codes, n)[0]


def segment_scores(wav: torch.Tensor, sr: int, piece, clf) -> dict:
    bpm = me.fold_tempo(me.estimate_tempo(wav, sr))
    key = me.estimate_key(wav, sr)
    fam = me.family_of(piece.lead)
    return {"tempo_ratio": _r(bpm / me.fold_tempo(piece.bpm), 3), "mode_ok": key.mode_given_tonic(piece.tonic) == piece.mode,
            "instrument_ok": clf.predict(wav, sr, me.lead_choices(piece.style)) == fam,
            **{k: _r(v) for k, v in me.tonality(wav, sr).items()}}


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    """This benchmark's options (``tempos`` as a list of ints); also the held-out plan other
    benchmarks share (``benchmarks/codec_tonality.py``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a TextToMusic folder (default: checkpoints/music)")
    p.add_argument("--classifier", default=None, help="lead-family classifier folder (default: checkpoints/music_eval)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--codebook-temperatures", default=None, metavar="T0,T1,...",
                   help="one sampling temperature per codebook (default: the model's pipeline.json, else none)")
    p.add_argument("--batch", type=int, default=8, help="prompts per generate() call")
    p.add_argument("--heldout-seed", type=int, default=1717, help="synth-music seed the base pieces are planned with")
    p.add_argument("--train-corpus", default="0:200,7:800,11:1000,13:1000,17:1000,19:1000", help="SEED:N,... of the training corpus's synth-music runs")
    p.add_argument("--tempos", default="80,95,110,125,140", help="asked BPM, inside [80, 160)")
    p.add_argument("--n-tempo", type=int, default=3, help="base pieces of the tempo sweep")
    p.add_argument("--n-mode", type=int, default=12, help="base pieces of the major/minor pairs")
    p.add_argument("--mode-seeds", type=int, default=3,
                   help="generation seeds of each mode caption (seed, seed + 1, ...); mode accuracy is over all")
    p.add_argument("--n-instrument", type=int, default=8, help="base pieces of the lead-family sweep")
    p.add_argument("--instrument-seeds", type=int, default=3,
                   help="generation seeds of each instrument caption; the accuracy is over all")
    p.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=None,
                   help="also score fluidsynth renders of the same pieces (default: when fluidsynth exists)")
    p.add_argument("--melody", action="store_true", help="melody agreement with vs without the melody")
    p.add_argument("--n-melody", type=int, default=4)
    p.add_argument("--long", action="store_true", help="seconds 30-40 vs 0-10 of a 40 s generation")
    p.add_argument("--long-duration", type=float, default=40.0)
    p.add_argument("--segment", type=float, default=10.0, help="seconds per scored segment of the long run")
    p.add_argument("--n-long", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="CI: a tiny random pipeline, very short clips")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "music_adherence.jsonl"),
                   help="JSON-lines file the line is appended to ('' for none; --tiny: none)")
    args = p.parse_args(argv)
    args.tempos = [int(t) for t in args.tempos.split(",") if t]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from codeclm.pipelines import TextToMusic
    from codeclm.threads import machine_info, set_threads

    set_threads(args.threads)
    t_start = time.perf_counter()
    if args.tiny:
        pipe = tiny_pipeline()
        args.duration, args.segment, args.long_duration = 0.25, 0.1, 0.4
        args.n_tempo, args.n_mode, args.n_instrument, args.n_melody, args.n_long = 1, 1, 1, 1, 1
        args.mode_seeds, args.instrument_seeds = min(args.mode_seeds, 2), min(args.instrument_seeds, 2)
        args.tempos = args.tempos[:2]
        args.results = ""
        if args.oracle is None:
            args.oracle = False
    else:
        pipe = TextToMusic.from_pretrained(args.model)
    if args.codebook_temperatures:
        pipe.codebook_temperatures = [float(t) for t in args.codebook_temperatures.split(",")]
    if args.oracle is None:
        args.oracle = shutil.which("fluidsynth") is not None
    clf_folder = Path(args.classifier) if args.classifier else None
    clf = me.InstrumentClassifier.load(clf_folder)
    ref_path = (clf_folder or me.default_classifier_folder()) / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.is_file() else {}
    sr = pipe.sample_rate

    train_caps = me.training_captions(args.train_corpus)
    cases, dropped = build_cases(args, train_caps)
    groups = ("tempo", "mode", "instrument")
    captions = {g: [c[0].caption for c in cases[g]] for g in groups}
    assert not any(c in train_caps for g in groups for c in captions[g])
    audio, gen_s, n_clips = {}, 0.0, 0
    for g in groups:
        audio[g], s = generate_all(pipe, captions[g], args.duration, args.seed, args.batch, args.guidance)
        gen_s += s
        n_clips += len(captions[g])
    n_generated = n_clips
    generated = score(cases, audio, sr, clf)
    gen_rows = generated.pop("_tonality_rows")
    # mode and instrument: one clip per caption and seed (one clip's call is close to a coin flip;
    # more seeds narrow it), the headline numbers over all of them; everything else is seed 0's
    scorers = {"mode": score_mode, "instrument": lambda c, a, sr_: score_instrument(c, a, sr_, clf)}
    for g, n_seeds in (("mode", args.mode_seeds), ("instrument", args.instrument_seeds)):
        all_cases, all_audio, by_seed = list(cases[g]), list(audio[g]), [generated[g]["accuracy"]]
        for k in range(1, max(n_seeds, 1)):
            wavs, sec = generate_all(pipe, captions[g], args.duration, args.seed + k, args.batch, args.guidance)
            gen_s, n_generated = gen_s + sec, n_generated + len(wavs)
            all_cases, all_audio = all_cases + list(cases[g]), all_audio + wavs
            by_seed.append(scorers[g](cases[g], wavs, sr)["accuracy"])
        if len(by_seed) > 1:
            generated[g] = {**scorers[g](all_cases, all_audio, sr), "accuracy_by_seed": by_seed}
    out = {"benchmark": "music_adherence", "machine": machine_info(), "tiny": bool(args.tiny),
           "model": "tiny-random" if args.tiny else (args.model or "checkpoints/music"),
           "codebook_temperatures": pipe.codebook_temperatures,
           "classifier": str(clf_folder or "checkpoints/music_eval"),
           "heldout": {"seed": args.heldout_seed, "train_corpus": args.train_corpus, "n_captions": n_clips,
                       "captions_in_training": 0, "dropped_as_in_training": dropped},
           "duration_s": args.duration, "seed": args.seed, "guidance_scale": args.guidance,
           "tempo": {"asked": [a for _, a in cases["tempo"]], **generated["tempo"], "goal_spearman": 0.6},
           "mode": {**generated["mode"], "goal_accuracy": 0.8, "n": len(cases["mode"]),
                    "seeds": max(args.mode_seeds, 1)},
           "instrument": {**generated["instrument"], "goal_ratio_to_chance": 2.0, "n": len(cases["instrument"]),
                          "seeds": max(args.instrument_seeds, 1)},
           "tonality": {"generated": generated["tonality"], "in_corpus_range": in_range(gen_rows, reference.get("corpus")),
                        "in_corpus_range_by_score": in_range_by_score(gen_rows, reference.get("corpus")),
                        # the corpus through the LM's codec: what a model of its tokens can reach
                        "in_codec_corpus_range": in_range(gen_rows, reference.get("corpus_codec")),
                        "in_codec_corpus_range_by_score": in_range_by_score(gen_rows, reference.get("corpus_codec")),
                        "corpus": reference.get("corpus"), "corpus_codec": reference.get("corpus_codec"),
                        "noise": reference.get("noise")},
           "x_realtime": _r(n_generated * args.duration / max(gen_s, 1e-9), 3)}
    if args.oracle:
        with tempfile.TemporaryDirectory() as d:
            rendered = {g: [me.render_piece(c[0], args.duration, args.heldout_seed, d, f"{g}{i}")
                            for i, c in enumerate(cases[g])] for g in groups}
        out["oracle"] = oracle_summary(score(cases, rendered, me.EVAL_SR, clf), reference)
        # the same renders through the model's own codec (its codebooks): the best this model can score
        through = {g: [codec_round_trip(pipe, w) for w in rendered[g]] for g in groups}
        out["oracle_codec"] = oracle_summary(score(cases, through, sr, clf), reference)
    if args.melody:
        out["melody"] = run_melody(pipe, args, train_caps)
    if args.long:
        out["long"] = run_long(pipe, args, clf, train_caps)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_result(out, args.results)
    return out


def run_melody(pipe, args, train_caps) -> dict:
    from codeclm.audio import resample

    if not pipe.has_melody:
        return {"error": "this model has no melody conditioning"}
    pool = [p for p in me.corpus_pieces(args.heldout_seed + 1, 50) if p.caption not in train_caps][: args.n_melody]
    items = []
    with tempfile.TemporaryDirectory() as d:
        for i, piece in enumerate(pool):
            if shutil.which("fluidsynth"):
                wav = me.render_piece(piece, args.duration, args.heldout_seed + 1, d, f"m{i}")
                wav = resample(wav.mean(0, keepdim=True), me.EVAL_SR, pipe.sample_rate)
            else:  # no renderer: a C-major scale of sine tones as the melody
                wav = me.scale_melody(args.duration, pipe.sample_rate)
            items.append((piece.caption, wav))
    res = me.melody_following(pipe, items, args.duration, args.seed, guidance_scale=args.guidance,
                              batch=args.batch)
    # the ceiling of a model speaking the codec's tokens: each reference against its own codec round trip
    through = [me.melody_agreement(wav, codec_round_trip(pipe, resample(wav, pipe.sample_rate, me.EVAL_SR)),
                                   pipe.sample_rate, pipe.codec.hop_length) for _, wav in items]
    return {"n": len(items), "agreement_melody": _r(np.mean(res["with"])),
            "agreement_text_only": _r(np.mean(res["without"])), "agreement_codec_round_trip": _r(np.mean(through)),
            "chance": _r(1 / 12), "goal": 0.4}


def run_long(pipe, args, clf, train_caps) -> dict:
    from codeclm.pipelines.longform import generate_long

    pieces = [p for p in me.corpus_pieces(args.heldout_seed + 2, 50) if p.caption not in train_caps][: args.n_long]
    seg = int(round(args.segment * pipe.sample_rate))
    first, last, t = [], [], time.perf_counter()
    for piece in pieces:
        wav = generate_long(pipe, piece.caption, args.long_duration, seed=args.seed, guidance_scale=args.guidance)
        first.append(segment_scores(wav[:, :seg], pipe.sample_rate, piece, clf))
        last.append(segment_scores(wav[:, -seg:], pipe.sample_rate, piece, clf))
    gen_s = time.perf_counter() - t

    def agg(rows):
        return {"tempo_ratio_median": _r(np.median([r["tempo_ratio"] for r in rows]), 3),
                "mode_accuracy": _r(np.mean([r["mode_ok"] for r in rows])),
                "instrument_accuracy": _r(np.mean([r["instrument_ok"] for r in rows])),
                **{k: _r(np.median([r[k] for r in rows])) for k in TONALITY_KEYS}}

    lo, hi = args.long_duration - args.segment, args.long_duration
    return {"n": len(pieces), "duration_s": args.long_duration, f"first_0_{args.segment:g}s": agg(first),
            f"last_{lo:g}_{hi:g}s": agg(last), "x_realtime": _r(len(pieces) * args.long_duration / gen_s, 3)}


if __name__ == "__main__":
    main(sys.argv[1:])
