"""``codeclm music`` (and ``python generate.py music``): text to music.

With a prompts file (one prompt a line; blank lines and # comments skipped) prompt i (from 0)
uses seed ``--seed + i`` and goes to ``OUT_DIR/{i:03d}_{slug}.wav``; under a launcher (torchrun,
accelerate launch) the prompts are split across processes and the files are the same as with one.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from codeclm.cli.common import (AUDIO_EXTENSIONS, UsageError, add_command, add_device, add_force, add_model,
                                add_output, add_quiet, add_sampling, add_seed, batch_outputs, model_folder,
                                output_file, positive, run_jobs)
from codeclm.errors import CodecLMError

USAGE = """%(prog)s PROMPT -o FILE [options]
       %(prog)s --prompts-file FILE --out-dir FOLDER [options]"""

EXAMPLES = """examples:
  codeclm music "calm lo-fi piano, 80 bpm" --duration 8 -o out.wav
  codeclm music "slow strings" --melody hum.wav --duration 10 -o follow.wav   # follows the tune
  codeclm music "calm piano" --continue intro.wav --duration 20 -o more.wav    # 20 s in all, intro first
  codeclm music --prompts-file prompts.txt --out-dir out/ --duration 10       # one file per prompt
  torchrun --nproc_per_node 2 generate.py music --prompts-file prompts.txt --out-dir out/

Outputs longer than the model's context are generated window by window. With --prompts-file,
prompt i (from 0) uses seed --seed + i and goes to OUT_DIR/000_slug-of-the-prompt.wav; several
processes (torchrun, accelerate launch) split the prompts and write the same files as one."""


def register(sub) -> None:
    p = add_command(sub, "music", "generate music from a text prompt",
                    "Generate music from a text prompt with a text-to-music model.", usage=USAGE)
    p.epilog = EXAMPLES
    p.add_argument("prompt", nargs="?", default=None, help="text prompt (or --prompts-file)")
    add_output(p, "audio file to write (.wav, .flac or .ogg); required with a PROMPT")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="one prompt per line; writes one file per prompt into --out-dir")
    p.add_argument("--out-dir", default=None, metavar="FOLDER", help="folder for the --prompts-file outputs")
    p.add_argument("--format", default="wav", choices=[e[1:] for e in AUDIO_EXTENSIONS],
                   help="file type of the --out-dir outputs")
    p.add_argument("-d", "--duration", type=float, default=8.0,
                   help="length of the output in seconds (with --continue: the clip included)")
    add_model(p, "music")
    add_seed(p, "sampling seed; prompt i of a prompts file uses seed + i")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1: off)")
    add_sampling(p, 1.0, 250, 0.0)
    p.add_argument("--melody", default=None, metavar="CLIP",
                   help="audio clip whose melody the music follows (needs a melody model)")
    p.add_argument("--continue", dest="continue_from", default=None, metavar="CLIP",
                   help="audio clip to continue: the output starts with it (--duration counts it)")
    p.add_argument("--window", type=float, default=None,
                   help="seconds generated per step for long outputs (default: the model's context)")
    p.add_argument("--overlap", type=float, default=None,
                   help="seconds of the output so far each step continues from (default: 40%% of the window)")
    add_device(p)
    add_force(p)
    add_quiet(p)
    p.set_defaults(func=run_music)


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


def _jobs(args) -> list[tuple[str, Path]]:
    """(prompt, output path) pairs, validated without loading anything heavy."""
    if args.prompts_file is not None:
        if args.prompt is not None or args.output is not None:
            raise UsageError("give either a prompt with -o, or --prompts-file with --out-dir, not both")
        if args.out_dir is None:  # before reading the file: the usage error comes first
            raise UsageError("--prompts-file needs --out-dir")
        prompts = read_prompts(args.prompts_file)
        return list(zip(prompts, batch_outputs(args.out_dir, "--prompts-file", prompts, args.format)))
    if args.prompt is None or not args.prompt.strip():
        raise CodecLMError("the prompt is empty (give a text prompt, or --prompts-file)")
    if args.out_dir is not None:
        raise UsageError("--out-dir goes with --prompts-file; use -o for one prompt")
    return [(args.prompt.strip(), output_file(args.output))]


def _check_numbers(args) -> None:
    from codeclm.pipelines.base import GenerationPipeline

    if not math.isfinite(args.duration) or args.duration <= 0:
        raise CodecLMError(f"--duration must be > 0 seconds, got {args.duration:g}")
    positive(args.window, "--window")
    positive(args.overlap, "--overlap")
    GenerationPipeline._check_sampling(args.guidance, args.temperature, args.top_k, args.top_p)


def run_music(args) -> int:
    from codeclm.audio import audio_info

    _check_numbers(args)
    jobs = _jobs(args)
    model_folder(args.model)
    for clip in (args.continue_from, args.melody):  # unreadable clips: fail before loading the model
        if clip is not None:
            audio_info(clip)
    clip = None

    def load(device):
        nonlocal clip
        from codeclm.pipelines import TextToMusic
        from codeclm.pipelines.longform import encode_clip

        with _quiet_loading(args.quiet):
            pipe = TextToMusic.from_pretrained(args.model, device=device)
        if args.duration > pipe.max_duration:
            raise CodecLMError(f"--duration must be at most {pipe.max_duration:g} seconds for this model, "
                               f"got {args.duration:g}")
        clip = encode_clip(pipe, args.continue_from) if args.continue_from is not None else None
        if args.melody is not None and not pipe.has_melody:
            raise CodecLMError(f"{args.model or 'the default model'}: has no melody conditioning; drop --melody")
        return pipe

    def produce(pipe, prompt, seed, progress):
        import torch

        from codeclm.pipelines.longform import generate_long

        with torch.inference_mode():
            return generate_long(pipe, prompt, args.duration, args.window, args.overlap, seed=seed,
                                 guidance_scale=args.guidance, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, prompt_codes=clip, progress=progress, melody=args.melody)

    return run_jobs(jobs, args, load, produce, repr)


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
