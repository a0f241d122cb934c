"""What every command shares: the help formatter, the options defined once (--model, --force,
--bandwidth, --seed, --device, -o, --quiet, --threads), deprecated spellings, and checks of the
files a command is about to write.

A command module calls :func:`add_command` to get its parser and these helpers to give it options;
it raises :class:`~codeclm.errors.CodecLMError` on failure and never prints errors itself: the one
handler in :func:`codeclm.cli.run` does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
import warnings
from pathlib import Path

from codeclm.errors import CodecLMError, OutputExistsError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

MODEL_HELP = {
    "codec": "codec folder (default: the shipped checkpoints/codec)",
    "music": "text-to-music model folder (default: the shipped checkpoints/music)",
    "voice": "voice-cloning model folder, VALL-E or Dia (default: the shipped checkpoints/voice)",
}


class UsageError(CodecLMError):
    """The command line itself is wrong (not a file it names): exit status 2, like argparse's."""

    exit_code = 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Paragraphs of a description or epilog are wrapped, except those with indented lines
    (examples), which keep their layout; an option's default is appended to its help unless the
    help already states it or there is nothing worth showing (None, False: said in words)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(textwrap.fill(" ".join(lines), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return super()._get_help_string(action)


def add_command(subparsers, name: str, help: str, description: str | None = None,
                usage: str | None = None) -> argparse.ArgumentParser:
    """A command's parser, with the shared formatter (``description`` defaults to ``help``)."""
    return subparsers.add_parser(name, help=help, usage=usage, formatter_class=HelpFormatter,
                                 description=description or help[:1].upper() + help[1:] + ".")


def add_group(subparsers, name: str, help: str, metavar: str = "SUBCOMMAND"):
    """A command group (``data``, ``eval``, ``voice``): returns its own subparsers object."""
    group = add_command(subparsers, name, help)
    sub = group.add_subparsers(dest=f"{name}_command", metavar=metavar)
    sub.required = True
    return sub


# -- deprecated spellings ----------------------------------------------------------------------------
class _Deprecated(argparse.Action):
    """A hidden old spelling of an option: accepted, with a one-line note on stderr."""

    def __init__(self, option_strings, dest, target: argparse.Action, note: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=target.nargs, type=target.type, choices=target.choices,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS, metavar=target.metavar)
        self.target, self.note = target, note

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; "
              f"{self.note}", file=sys.stderr)
        self.target(parser, namespace, values, self.target.option_strings[-1])


def deprecated(parser: argparse.ArgumentParser, old: str, target: argparse.Action, note: str | None = None) -> None:
    """Accept ``old`` as a deprecated spelling of the option ``target`` (what add_argument returned)."""
    parser.add_argument(old, dest=target.dest, action=_Deprecated, target=target,
                        note=note or f"use {target.option_strings[-1]}")


def deprecated_flag(parser: argparse.ArgumentParser, old: str, note: str) -> None:
    """Accept the on/off flag ``old`` that no longer does anything (its behaviour is now the default)."""
    target = argparse._StoreTrueAction(option_strings=[old], dest="_unused")
    parser.add_argument(old, dest="_unused", action=_Deprecated, target=target, note=note)


# -- the options defined once ------------------------------------------------------------------------
def add_model(p: argparse.ArgumentParser, kind: str, help: str | None = None) -> argparse.Action:
    return p.add_argument("--model", default=None, metavar="FOLDER", help=help or MODEL_HELP[kind])


def add_force(p: argparse.ArgumentParser, help: str = "overwrite existing output files") -> argparse.Action:
    return p.add_argument("-f", "--force", action="store_true", help=help)


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress bar or messages") -> argparse.Action:
    return p.add_argument("-q", "--quiet", action="store_true", help=help)


def add_bandwidth(p: argparse.ArgumentParser, default: float | None = 6.0, help: str = "codec bandwidth in kbps",
                  many: bool = False) -> argparse.Action:
    return p.add_argument("-b", "--bandwidth", type=float, default=default, nargs="+" if many else None,
                          metavar="KBPS", help=help)


def add_seed(p: argparse.ArgumentParser, help: str = "sampling seed") -> argparse.Action:
    return p.add_argument("--seed", type=int, default=0, help=help)


def add_sampling(p: argparse.ArgumentParser, temperature: float | None, top_k: int | None, top_p: float | None,
                 unset: str = "") -> None:
    """--temperature, --top-k, --top-p; ``unset`` says what a None default means."""
    p.add_argument("--temperature", type=float, default=temperature, metavar="T",
                   help=f"sampling temperature (0: greedy{unset})")
    p.add_argument("--top-k", type=int, default=top_k, metavar="K",
                   help=f"sample from the K most likely tokens (0: off{unset})")
    p.add_argument("--top-p", type=float, default=top_p, metavar="P",
                   help=f"nucleus sampling probability (0: off{unset})")


def add_device(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument("--device", default="auto",
                          help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:1, mps")


def add_output(p: argparse.ArgumentParser, help: str = "audio file to write (.wav, .flac or .ogg)",
               required: bool = False) -> argparse.Action:
    return p.add_argument("-o", "--output", default=None, required=required, metavar="FILE", help=help)


def add_threads(p: argparse.ArgumentParser) -> None:
    if not any("--threads" in a.option_strings for a in p._actions):
        p.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads (default: the CPUs other processes leave free; env CODECLM_THREADS)")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Give every command (each leaf parser under ``parser``) a ``--threads N`` option; idempotent."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for child in dict.fromkeys(action.choices.values()):
            add_threads_option(child)
    if not subparsers:
        add_threads(parser)


# -- checks before anything heavy loads --------------------------------------------------------------
def positive(value: float | None, flag: str, unit: str = "seconds") -> None:
    """``flag``'s value (when given) must be a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CodecLMError(f"{flag} must be a positive number of {unit}, got {value:g}")


def model_folder(path: str | None) -> None:
    """A given ``--model`` must be a folder (the shipped default is checked where it loads)."""
    if path is not None and not Path(path).is_dir():
        from codeclm.errors import ConfigError

        raise ConfigError(f"{path}: no such model folder")


def output_file(path: str | None) -> Path:
    """The ``-o`` audio file: known extension, not a folder, its folder exists."""
    if path is None:
        raise UsageError("give the output file with -o/--output")
    out = Path(path)
    if out.suffix.lower() not in AUDIO_EXTENSIONS:
        raise CodecLMError(f"{out}: unknown audio extension {out.suffix!r} (use one of {', '.join(AUDIO_EXTENSIONS)})")
    if out.is_dir():
        raise CodecLMError(f"{out}: is a folder")
    if not out.parent.is_dir():
        raise CodecLMError(f"{out}: folder {out.parent} does not exist")
    return out


def refuse_existing(paths, force: bool) -> None:
    """Without ``--force`` an existing output is an error (before any work is done)."""
    if not force:
        for out in paths:
            if Path(out).exists():
                raise OutputExistsError(out)


def batch_outputs(out_dir: str | None, flag: str, texts: list[str], ext: str = "wav") -> list[Path]:
    """``OUT_DIR/{i:03d}_{slug}.ext`` for the texts of a ``flag`` file (``--prompts-file``...)."""
    if out_dir is None:
        raise UsageError(f"{flag} needs --out-dir")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise CodecLMError(f"{folder}: not a folder")
    return [folder / output_name(i, t, len(texts), ext) for i, t in enumerate(texts)]


def slugify(text: str, max_len: int = 40) -> str:
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def output_name(index: int, text: str, count: int, ext: str = "wav") -> str:
    width = max(3, len(str(max(count - 1, 0))))
    return f"{index:0{width}d}_{slugify(text)}.{ext.lstrip('.')}"


# -- running ------------------------------------------------------------------------------------------
def run_jobs(jobs: list, args, load, produce, describe) -> int:
    """Write the ``(item, output)`` jobs of a command: under a launcher (torchrun, accelerate
    launch) each process takes its share and checks only its own outputs. ``load(device)`` gives
    the pipeline, ``produce(pipe, item, seed, progress)`` an item's audio (job i: seed --seed + i),
    ``describe(item)`` the end of its summary line."""
    from codeclm.audio import save_audio
    from codeclm.pipelines.sharding import job_seed, process_shard

    shard = process_shard(jobs, args.device)
    try:
        mine = shard.items
        refuse_existing([out for _, (_, out) in mine], args.force)
        if not mine:
            return 0
        pipe = load(shard.device)
        if getattr(args, "out_dir", None) is not None:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        where = f" [process {shard.rank}/{shard.world}]" if shard.world > 1 else ""
        for index, (item, out) in mine:
            seed = job_seed(args.seed, index)
            audio = produce(pipe, item, seed, not args.quiet and shard.world == 1)
            save_audio(out, audio, pipe.sample_rate)
            report(f"{out}: {audio.shape[-1] / pipe.sample_rate:.2f} s, seed {seed}, {describe(item)}{where}",
                   args.quiet)
        return 0
    finally:
        shard.close()



@contextlib.contextmanager
def notes(prog: str, quiet: bool = False):
    """The warnings a pipeline gives (a transcribed or cropped reference) as ``prog: note: ...`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if not quiet:
        for w in caught:
            print(f"{prog}: note: {w.message}", file=sys.stderr)


def report(message: str, quiet: bool = False) -> None:
    """A command's summary line (on stderr: stdout may carry data)."""
    if not quiet:
        print(message, file=sys.stderr)


@functools.lru_cache(maxsize=1)
def shipped_voice_facts() -> dict:
    """Languages and reference limits of the shipped voice model, for --help (empty if absent)."""
    try:
        from codeclm.pretrained import default_checkpoint

        folder = default_checkpoint("voice")
        info = json.loads((folder / "pipeline.json").read_text())
        config = json.loads((folder / "valle" / "config.json").read_text())
        return {"languages": ", ".join(info["languages"]), "max": config["max_prompt_seconds"],
                "min": config["min_prompt_seconds"]}
    except (CodecLMError, OSError, ValueError, KeyError, TypeError):
        return {}
