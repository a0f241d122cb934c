#!/usr/bin/env bash
# Builds every training and evaluation corpus the shipped recipes read, from the allowed sources
# only (../shared/environment-notes.md: espeak-ng, flite, Asterisk prompts, klettres, fluidsynth
# renders, Wesnoth music). Needs the Debian packages named in the README. Idempotent: a corpus
# whose manifest exists is kept. Usage (from the repository root):
#   bash recipes/make_data.sh [DATA_ROOT]        # default: ./data  (one CPU core, ~30 min)
set -euo pipefail
D=${1:-data}
mkdir -p "$D/codec_v2" "$D/general"
run() { local out=$1; shift; if [ -e "$out" ]; then echo "keep $out"; else echo "make $out"; "$@"; fi; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run "$D/speech_synth/manifest.jsonl"  codeclm data synth-speech "$D/speech_synth" -n 1500 --seed 0
run "$D/speech_flite/manifest.jsonl"  codeclm data synth-speech "$D/speech_flite" -n 1000 --engine flite --seed 0
run "$D/speech_real/train.jsonl"      codeclm data real-speech "$D/speech_real"
run "$D/speech_real_other/train.jsonl" codeclm data real-speech-other "$D/speech_real_other"
run "$D/speech_klettres/train.jsonl"  codeclm data real-klettres "$D/speech_klettres"
run "$D/music_synth/manifest.jsonl"   codeclm data synth-music "$D/music_synth" -n 200 --seed 0
run "$D/music_synth2/manifest.jsonl"  codeclm data synth-music "$D/music_synth2" -n 800 --seed 7
run "$D/music_real/train.jsonl"       codeclm data real-music "$D/music_real"
run "$D/codec_v2/train.jsonl" codeclm data merge "$D/speech_synth/manifest.jsonl" "$D/speech_flite/manifest.jsonl" \
    "$D/speech_real/train.jsonl*2" "$D/speech_real_other/train.jsonl" "$D/speech_klettres/train.jsonl" \
    "$D/music_synth/manifest.jsonl*4" "$D/music_real/train.jsonl*20" -o "$D/codec_v2/train.jsonl"
run "$D/general/heldout.jsonl" codeclm data merge "$D/speech_real/heldout.jsonl" "$D/music_real/heldout.jsonl" \
    -o "$D/general/heldout.jsonl"
run "$D/music_synth_all.jsonl" codeclm data merge "$D/music_synth/manifest.jsonl" "$D/music_synth2/manifest.jsonl" \
    -o "$D/music_synth_all.jsonl"
echo "data ready in $D"
