"""Train a codeclm model from a recipe:  python train.py RECIPE.yaml [key=value ...]

    python train.py recipes/codec_tiny.yaml out_dir=runs/tiny max_steps=20 seed=0
    python train.py recipes/codec_speech.yaml out_dir=runs/speech optim.lr=1e-4 data.batch_size=16

Every recipe key can be overridden with ``key=value`` (dotted for sections: ``data.batch_size=4``,
``model.n_filters=16``, ``codec.disc_start_step=1000``); an unknown key is an error that lists
the valid ones. Running the same command again resumes from ``out_dir``'s latest checkpoint
(``resume=auto``, the default): the run continues with exactly the batches, RNG states and
optimizer states it had, so a run killed at any moment and resumed ends as an uninterrupted one.
``resume=never`` refuses an out_dir that holds checkpoints; ``resume=PATH`` starts from a
checkpoint folder. Results: ``out_dir/model`` (the released codec folder), ``checkpoints/``,
``metrics.jsonl``, TensorBoard logs in ``tb/`` (``tensorboard --logdir out_dir``).

Several processes on one machine (the batch size is per process)::

    accelerate launch --multi_gpu --num_processes 2 train.py recipes/codec_tiny.yaml out_dir=runs/x
    torchrun --nproc_per_node 2 train.py recipes/codec_tiny.yaml out_dir=runs/x

On a machine without a GPU both start CPU processes talking over gloo (the trainer asks
Accelerate for the CPU when no GPU is present). ``accelerate launch --cpu --num_processes N``
starts a single process unless it runs under MPI (``--mpirun_hostfile``): accelerate's own
multi-CPU launcher is mpirun.

Several machines (shared filesystem for out_dir; run on every machine, machine_rank 0..N-1)::

    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --num_processes 16 \\
        --main_process_ip 10.0.0.1 --main_process_port 29500 train.py recipes/codec_general.yaml
    # or: torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 \\
    #         --master_port 29500 train.py recipes/codec_general.yaml

``--num_processes`` counts processes on all machines together. Mixed precision comes from the
recipe (``mixed_precision=bf16``), not from the launcher.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: train.py RECIPE.yaml [key=value ...]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"{USAGE}\ntrain.py: error: a recipe is required (see recipes/)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from codeclm.errors import CodecLMError, ConfigError
    from codeclm.training.config import load_recipe

    recipe, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    try:
        cfg = load_recipe(recipe, overrides)
    except ConfigError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "MASTER_ADDR" in os.environ
            and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ):
        print("train.py: warning: `accelerate launch --cpu` started one process; for several CPU processes use "
              "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`", file=sys.stderr)
    from codeclm.training.trainer import train

    try:
        train(cfg)
    except ConfigError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except CodecLMError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
