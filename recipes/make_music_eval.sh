#!/usr/bin/env bash
# Builds checkpoints/music_eval: the lead-instrument-family classifier and the tonality reference of
# benchmarks/music_adherence.py. Its own corpus (synth-music seed 31, 8 s pieces, none of them in
# the LM's training data), split by a hash of the file name, plus the same clips through the LM's
# codec (checkpoints/codec_v1 at 3 kbps, the tokens checkpoints/music speaks), so that generated audio
# is read as well as renders. Pieces whose captions the benchmark can ask are left out of training
# (--exclude-heldout-seed, default 1717). Resumable: renders, round trips and features are kept.
#   bash recipes/make_music_eval.sh [EVAL_DATA_ROOT] [OUT]    # default: data/music_eval checkpoints/music_eval
set -euo pipefail
E=${1:-data/music_eval}
OUT=${2:-checkpoints/music_eval}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
M="python -m codeclm.evaluation.music_eval"
[ -e "$E/train31/manifest.jsonl" ] || codeclm data synth-music "$E/train31" -n 900 --seed 31 --duration 8
[ -e "$E/split/heldout.jsonl" ] || $M split "$E/train31/manifest.jsonl" --heldout-percent 15 -o "$E/split"
$M codec "$E/split/train.jsonl" --codec checkpoints/codec_v1 -b 3 -o "$E/split/train_codec"
$M codec "$E/split/heldout.jsonl" --codec checkpoints/codec_v1 -b 3 -o "$E/split/heldout_codec"
$M train "$E/split/train.jsonl" "$E/split/train_codec/manifest.jsonl" \
    --heldout "$E/split/heldout.jsonl" "$E/split/heldout_codec/manifest.jsonl" \
    --codec-reference "$E/split/train_codec/manifest.jsonl" --cache "$E/split/features.npz" \
    --hidden 256 --l2 0.03 --epochs 600 -o "$OUT"
