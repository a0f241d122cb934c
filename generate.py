"""Generate audio with codeclm:  python generate.py music|clone|say ...

    python generate.py clone --ref ref.wav --ref-text "what ref.wav says" --text "new sentence" -o out.wav
    python generate.py say "Hello there." --voice allison -o hello.wav   (--list-voices)

    python generate.py music "calm lo-fi piano, 80 bpm" --duration 8 -o out.wav [--model FOLDER]
        [--seed 0] [--guidance 3] [--temperature 1] [--top-k 250] [--top-p 0] [--continue clip.wav]
    python generate.py music --prompts-file prompts.txt --out-dir out/ [--force] [--quiet]

Several processes split a prompts file (the files are identical to a one-process run)::

    accelerate launch --multi_gpu --num_processes 2 generate.py music --prompts-file p.txt --out-dir out/
    torchrun --nproc_per_node 2 generate.py music --prompts-file p.txt --out-dir out/   # CPU-only hosts

These are the ``codeclm music|clone|say`` commands (``codeclm/pipelines/cli.py`` and
``clone_cli.py``); ``--help`` lists every option.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from codeclm.pipelines.cli import main as generation_main

    return generation_main(argv, prog="generate.py")


if __name__ == "__main__":
    sys.exit(main())
