"""``codeclm train`` (also ``python train.py``): train a model from a recipe."""

from __future__ import annotations

import os
import sys

from codeclm.cli.common import UsageError, add_command

DESCRIPTION = """Train a codeclm model from a recipe: RECIPE [key=value ...]

RECIPE is a recipe file or the name of one in recipes/ (codec_tiny, codec_tiny.yaml
and recipes/codec_tiny.yaml are the same):

    python train.py codec_tiny out_dir=runs/tiny max_steps=20 seed=0
    python train.py recipes/codec_speech.yaml out_dir=runs/speech optim.lr=1e-4 data.batch_size=16

Every recipe key can be overridden with key=value (dotted for sections: data.batch_size=4,
model.n_filters=16, codec.disc_start_step=1000), read as the recipe file reads it
(mixed_precision=no works on both); an unknown key is an error that lists the valid ones.
Running the same command again resumes from out_dir's latest checkpoint (resume=auto, the
default): the run continues with exactly the batches, RNG states and optimizer states it had, so
a run killed at any moment and resumed ends as an uninterrupted one. resume=never refuses an
out_dir that holds checkpoints; resume=PATH starts from a checkpoint folder. Results:
out_dir/model (the released model folder), checkpoints/, metrics.jsonl, and with
TensorBoard installed (pip install 'codeclm[train]') its logs in tb/ (tensorboard
--logdir out_dir); without it validation clips are written as WAV files to out_dir/audio.

Several CPU processes on one machine (the batch size is per process; one thread each avoids
oversubscribing the cores):

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 train.py codec_tiny out_dir=runs/x
    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 train.py codec_tiny out_dir=runs/x

With GPUs the same commands start one process per GPU (--nproc_per_node / --num_processes
= the GPU count). On a machine without a GPU both start CPU processes talking over gloo (the
trainer asks Accelerate for the CPU when no GPU is present). accelerate launch --cpu
--num_processes N starts a single process unless it runs under MPI (--mpirun_hostfile):
accelerate's own multi-CPU launcher is mpirun; use one of the two commands above.

Several machines (a shared filesystem for out_dir; the same command on every machine, with its
own rank 0..N-1; --num_processes counts the processes of all machines together):

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 \\
        --master_port 29500 train.py codec_general        # machine 0; machine 1: --node_rank 1
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --num_processes 16 \\
        --main_process_ip 10.0.0.1 --main_process_port 29500 train.py codec_general

Two "machines" on one host, as the tests run them (each with one CPU process):

    OMP_NUM_THREADS=1 torchrun --nnodes 2 --node_rank 0 --nproc_per_node 1 --master_addr 127.0.0.1 \\
        --master_port 29500 train.py codec_tiny out_dir=runs/x &
    OMP_NUM_THREADS=1 torchrun --nnodes 2 --node_rank 1 --nproc_per_node 1 --master_addr 127.0.0.1 \\
        --master_port 29500 train.py codec_tiny out_dir=runs/x

Mixed precision comes from the recipe, not from the launcher: mixed_precision=auto is bf16
where the hardware computes it natively (a GPU, a CPU with AMX-BF16 or AVX512-BF16) and fp32
elsewhere; bf16 forces bf16 autocast (on a CPU without native bf16 it is emulated and much
slower); no is fp32.
"""


USAGE = "%(prog)s RECIPE [key=value ...] [--threads N]"


def add_train_arguments(p) -> None:
    p.usage = USAGE
    p.add_argument("recipe", nargs="*", metavar="RECIPE [key=value ...]",
                   help="a recipe file or the name of one in recipes/, then overrides of its keys")
    p.set_defaults(func=run_train)


def register(sub) -> None:
    add_train_arguments(add_command(sub, "train", "train a model from a recipe (resumable)", DESCRIPTION))


def run_train(args) -> int:
    from codeclm.errors import ConfigError
    from codeclm.training.config import load_recipe

    argv = args.recipe
    if not argv:
        raise UsageError("a recipe is required (see recipes/)")
    recipe, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    try:  # a recipe or key that cannot be used is a command-line error (exit 2)
        cfg = load_recipe(recipe, overrides)
        if (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "MASTER_ADDR" in os.environ
                and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ):
            print(f"{args.prog}: warning: accelerate launch --cpu started one process; for several CPU processes "
                  "use accelerate launch --multi_gpu --num_processes N or torchrun --nproc_per_node N",
                  file=sys.stderr)
        from codeclm.training.trainer import train

        train(cfg)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return 0


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """The stand-alone ``python train.py RECIPE [key=value ...]`` (the ``codeclm train`` command)."""
    from codeclm.cli import standalone_main

    return standalone_main(prog, DESCRIPTION, add_train_arguments, argv)
