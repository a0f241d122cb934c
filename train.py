"""Train a codeclm model from a recipe:  python train.py RECIPE [key=value ...]

The same as ``codeclm train``; ``python train.py --help`` shows the whole guide (overrides,
resuming, several processes or machines, precision), which lives in ``codeclm/cli/train.py``::

    python train.py codec_tiny out_dir=runs/tiny max_steps=20 seed=0
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 train.py codec_tiny out_dir=runs/x
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from codeclm.cli.train import main as train_main

    return train_main(argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
