"""Generate audio with codeclm:  python generate.py music|clone|say|voice ...

    python generate.py music "calm lo-fi piano, 80 bpm" --duration 8 -o out.wav
    python generate.py clone --ref ref.wav --ref-text "what ref.wav says" --text "new sentence" -o out.wav
    python generate.py say "Hello there." --voice allison -o hello.wav   (--list-voices)

Several processes split a prompts or jobs file (the files are identical to a one-process run)::

    accelerate launch --multi_gpu --num_processes 2 generate.py music --prompts-file p.txt --out-dir out/
    torchrun --nproc_per_node 2 generate.py music --prompts-file p.txt --out-dir out/   # CPU-only hosts

These are the ``codeclm music|clone|say|voice`` commands (``codeclm/cli/music.py`` and
``codeclm/cli/voice.py``); ``--help`` lists every option.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from codeclm.cli import generate_main

    return generate_main(argv)


if __name__ == "__main__":
    sys.exit(main())
