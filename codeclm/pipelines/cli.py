"""``codeclm music`` (and ``python generate.py music``): text to music from the command line.

    codeclm music "calm lo-fi piano, 80 bpm" --duration 8 -o out.wav
    codeclm music "slow strings" --melody hum.wav --duration 10 -o follow.wav  # follows the tune
    codeclm music "calm piano" --continue intro.wav --duration 20 -o more.wav   # starts with the clip
    codeclm music --prompts-file prompts.txt --out-dir out/ --duration 10      # one file per prompt
    torchrun --nproc_per_node 2 generate.py music --prompts-file prompts.txt --out-dir out/

``--duration`` is the length of the output (with ``--continue``: the clip included). Durations
beyond the model's context are generated window by window (:mod:`codeclm.pipelines.longform`).
With ``--prompts-file`` (one prompt a line; blank lines and ``#`` comments skipped) prompt ``i``
(from 0) uses seed ``--seed + i`` and goes to ``OUT_DIR/{i:03d}_{slug}.wav``; under a launcher
the prompts are split across processes (:mod:`codeclm.pipelines.sharding`) and the files are
the same as with one process. Existing outputs are refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

from codeclm.errors import CodecLMError

__all__ = ["add_generation_commands", "batch_outputs", "main", "output_file", "output_name", "read_prompts",
           "slugify"]

EXTENSIONS = (".wav", ".flac", ".ogg")


def add_generation_commands(subparsers) -> None:
    """Register ``music``, ``clone`` and ``say`` on an argparse subparsers object."""
    p = subparsers.add_parser("music", help="generate music from a text prompt",
                              description="Generate music from a text prompt with a text-to-music pipeline.")
    p.add_argument("prompt", nargs="?", default=None, help="text prompt (or --prompts-file)")
    p.add_argument("-o", "--output", default=None, help="audio file to write (.wav/.flac/.ogg)")
    p.add_argument("--prompts-file", default=None, help="one prompt per line; writes one file per prompt")
    p.add_argument("--out-dir", default=None, help="folder for --prompts-file outputs")
    p.add_argument("--format", default="wav", choices=[e[1:] for e in EXTENSIONS],
                   help="file type of --out-dir outputs (default wav)")
    p.add_argument("-d", "--duration", type=float, default=8.0, help="seconds of audio (default 8)")
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoints/music)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; prompt i of a file uses seed + i")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=250, help="top-k sampling (0: off)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling (0: off)")
    p.add_argument("--melody", default=None, metavar="CLIP",
                   help="audio clip whose melody (chromagram) the music follows (a melody model)")
    p.add_argument("--continue", dest="continue_from", default=None, metavar="CLIP",
                   help="audio clip to continue: the output starts with it")
    p.add_argument("--window", type=float, default=None,
                   help="seconds per LM window for long outputs (default: the model's context)")
    p.add_argument("--overlap", type=float, default=None,
                   help="seconds of codes each window continues from (default: 40%% of the window)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(func=run_music)

    from codeclm.pipelines.clone_cli import add_clone_commands

    add_clone_commands(subparsers)


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def output_name(index: int, prompt: str, count: int, ext: str = "wav") -> str:
    width = max(3, len(str(max(count - 1, 0))))
    return f"{index:0{width}d}_{slugify(prompt)}.{ext.lstrip('.')}"


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CodecLMError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CodecLMError(f"{path}: cannot read prompts ({exc})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise CodecLMError(f"{path}: no prompts (one per line)")
    return prompts


def output_file(path: str | None) -> Path:
    """The ``-o`` audio file, checked before anything heavy loads (extension, folder exists)."""
    if path is None:
        raise CodecLMError("give the output file with -o/--output")
    out = Path(path)
    if out.suffix.lower() not in EXTENSIONS:
        raise CodecLMError(f"{out}: unknown audio extension {out.suffix!r} (use one of {', '.join(EXTENSIONS)})")
    if out.is_dir():
        raise CodecLMError(f"{out}: is a folder")
    if not out.parent.is_dir():
        raise CodecLMError(f"{out}: folder {out.parent} does not exist")
    return out


def batch_outputs(out_dir: str | None, flag: str, texts: list[str], ext: str = "wav") -> list[Path]:
    """``OUT_DIR/{i:03d}_{slug}.ext`` for the texts of a ``flag`` file (``--prompts-file``...)."""
    if out_dir is None:
        raise CodecLMError(f"{flag} needs --out-dir")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise CodecLMError(f"{folder}: not a folder")
    return [folder / output_name(i, t, len(texts), ext) for i, t in enumerate(texts)]


def _jobs(args) -> list[tuple[str, Path]]:
    """(prompt, output path) pairs, validated without loading anything heavy."""
    if args.prompts_file is not None:
        if args.prompt is not None or args.output is not None:
            raise CodecLMError("give either a prompt with -o, or --prompts-file with --out-dir, not both")
        if args.out_dir is None:  # before reading the file: the usage error comes first
            raise CodecLMError("--prompts-file needs --out-dir")
        prompts = read_prompts(args.prompts_file)
        return list(zip(prompts, batch_outputs(args.out_dir, "--prompts-file", prompts, args.format)))
    if args.prompt is None or not args.prompt.strip():
        raise CodecLMError("the prompt is empty (give a text prompt, or --prompts-file)")
    if args.output is None:
        raise CodecLMError("give the output file with -o/--output")
    if args.out_dir is not None:
        raise CodecLMError("--out-dir goes with --prompts-file; use -o for one prompt")
    return [(args.prompt.strip(), output_file(args.output))]


def _check_numbers(args) -> None:
    import math

    if not math.isfinite(args.duration) or args.duration <= 0:
        raise CodecLMError(f"--duration must be > 0 seconds, got {args.duration:g}")
    for name in ("window", "overlap"):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise CodecLMError(f"--{name} must be > 0 seconds, got {value:g}")
    from codeclm.pipelines.base import GenerationPipeline

    GenerationPipeline._check_sampling(args.guidance, args.temperature, args.top_k, args.top_p)


def run_music(args) -> int:
    from codeclm.pipelines.sharding import job_seed, process_shard

    _check_numbers(args)
    jobs = _jobs(args)
    if args.model is not None and not Path(args.model).is_dir():
        from codeclm.errors import ConfigError

        raise ConfigError(f"{args.model}: no such model folder")
    clip_path = args.continue_from
    if clip_path is not None:
        from codeclm.audio import audio_info

        audio_info(clip_path)  # unreadable clip: fail before loading the model
    if args.melody is not None:
        from codeclm.audio import audio_info

        audio_info(args.melody)
    shard = process_shard(jobs, args.device)
    try:
        mine = shard.items
        if not args.force:  # each process checks the files it will write: no race between processes
            for _, (_, out) in mine:
                if out.exists():
                    raise CodecLMError(f"{out}: exists (use --force to overwrite)")
        if not mine:
            return 0
        import torch

        from codeclm.audio import save_audio
        from codeclm.pipelines import TextToMusic
        from codeclm.pipelines.longform import encode_clip, generate_long

        with _quiet_loading(args.quiet):
            pipe = TextToMusic.from_pretrained(args.model, device=shard.device)
        if args.duration > pipe.max_duration:
            raise CodecLMError(f"--duration must be at most {pipe.max_duration:g} seconds for this model, "
                               f"got {args.duration:g}")
        clip = encode_clip(pipe, clip_path) if clip_path is not None else None
        if args.melody is not None and not pipe.has_melody:
            raise CodecLMError(f"{args.model or 'the default model'}: has no melody conditioning; drop --melody")
        if args.out_dir is not None:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        show = not args.quiet
        for index, (prompt, out) in mine:
            with torch.inference_mode():
                audio = generate_long(pipe, prompt, args.duration, args.window, args.overlap,
                                      seed=job_seed(args.seed, index), guidance_scale=args.guidance,
                                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                      prompt_codes=clip, progress=show and shard.world == 1,
                                      melody=args.melody)
            save_audio(out, audio, pipe.sample_rate)
            if show:
                where = f" [process {shard.rank}/{shard.world}]" if shard.world > 1 else ""
                print(f"{out}: {audio.shape[-1] / pipe.sample_rate:.2f} s, seed "
                      f"{job_seed(args.seed, index)}, {prompt!r}{where}", file=sys.stderr)
        return 0
    finally:
        shard.close()


@contextlib.contextmanager
def _quiet_loading(quiet: bool):
    """Hide transformers' weight-loading progress bar (the text encoder) under --quiet."""
    if not quiet:
        yield
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def build_parser(prog: str = "generate.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Generate audio with codeclm pipelines.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_generation_commands(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "generate.py") -> int:
    """Entry point of ``generate.py``: the generation commands alone, errors as one line (exit 1)."""
    from codeclm.cli import run

    return run(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())
