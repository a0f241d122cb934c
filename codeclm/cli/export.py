"""``codeclm export`` (also ``python -m codeclm.pipelines.export``): ship a trained pipeline folder."""

from __future__ import annotations

import sys

from codeclm.cli.common import add_command, add_force

DESCRIPTION = """Ship a trained pipeline folder: load the folder a training run exports (RUN/model: a
text-to-music or voice-cloning model) as its pipeline, so that a broken export fails here and not
for users, and write it again with the weights in --dtype (float16: half the size; computed in
float32 on load). DST is written to a temporary folder beside it and renamed.

example:
  codeclm export runs/lm_music/model checkpoints/music --checkpoint runs/lm_music/checkpoints/step_001750"""


DTYPE_NAMES = ("bfloat16", "float16", "float32")  # codeclm.pipelines.export.DTYPES: not imported to build --help


def add_export_arguments(p) -> None:
    p.add_argument("src", help="pipeline folder written by a training run (RUN/model)")
    p.add_argument("dst", help="folder to write (e.g. checkpoints/music)")
    p.add_argument("--dtype", default="float16", choices=DTYPE_NAMES, help="floating-point type of the weights")
    add_force(p, "replace an existing DST")
    p.add_argument("--checkpoint", default=None, metavar="STEP_DIR",
                   help="take the weights of a training checkpoint (RUN/checkpoints/step_N) instead of SRC's")
    p.add_argument("--codec", default=None, metavar="FOLDER",
                   help="ship this codec instead of SRC's; it must give exactly the same codes (e.g. another "
                        "decoder fine-tune of a frozen encoder and quantizer)")
    p.set_defaults(func=run_export)


def register(sub) -> None:
    add_export_arguments(add_command(sub, "export", "ship a trained pipeline folder (weights in float16)",
                                     DESCRIPTION))


def run_export(args) -> int:
    from codeclm.pipelines.export import export

    out = export(args.src, args.dst, args.dtype, args.force, args.checkpoint, args.codec)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1e6:.1f} MB")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m codeclm.pipelines.export") -> int:
    """The stand-alone ``python -m codeclm.pipelines.export SRC DST`` (the ``codeclm export`` command)."""
    from codeclm.cli import standalone_main

    return standalone_main(prog, DESCRIPTION, add_export_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
