"""The ``codeclm`` console script (also ``python -m codeclm.cli``, ``generate.py``, ``train.py`` and
``python -m codeclm.pipelines.export``): one parser, one error handler, one exit-code policy.

Each command group is one module of this package with a ``register(subparsers)`` function; a new
command is a new module plus one line in :data:`GROUPS`. Commands raise
:class:`~codeclm.errors.CodecLMError` and :func:`run` turns every failure into one line
``PROG: error: <file>: <problem>`` on stderr. Exit status: 0 done; 1 the job failed on what it was
given (a file, a model folder, a value); 2 the command line is wrong (argparse's usage errors, a
recipe that cannot be read); 130 interrupted; 141 stdout was closed (``| head``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from codeclm import __version__
from codeclm.cli.common import HelpFormatter, add_threads_option
from codeclm.errors import CodecLMError

__all__ = ["GROUPS", "build_parser", "generate_main", "main", "run", "standalone_main"]

#: command group -> module (``codeclm.cli.NAME``) whose ``register(subparsers)`` adds its commands
GROUPS = {
    "compression": "compress, decompress, info, roundtrip",
    "data": "data scan|synth-speech|synth-music|real-*|merge|tokenize",
    "evaluation": "eval codec|clone",
    "music": "music",
    "voice": "clone, say, voice add|list|remove",
    "export": "export",
    "train": "train",
}


def build_parser(groups=tuple(GROUPS), prog: str = "codeclm",
                 description: str = "Neural audio codec and audio language models: compress, generate, "
                                    "clone voices, build data, train and evaluate.") -> argparse.ArgumentParser:
    """The parser of ``prog`` with the commands of ``groups`` (names of :data:`GROUPS`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"codeclm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in groups:
        importlib.import_module(f"codeclm.cli.{name}").register(sub)
    add_threads_option(parser)
    return parser


def _closed_stdout() -> int:
    """A closed stdout (``codeclm info x.cclm | head -1``) ends quietly with SIGPIPE's status."""
    try:  # the interpreter flushes stdout at exit: point it at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, apply ``--threads`` and run the chosen command: the one error handler."""
    add_threads_option(parser)  # idempotent: parsers built elsewhere get it too
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    prog = args.prog = parser.prog  # for a command's own warnings
    try:
        threads = getattr(args, "threads", None)
        if threads is not None and threads < 1:
            parser.error(f"--threads must be >= 1, got {threads}")
        from codeclm.threads import set_threads

        set_threads(threads)
        return int(func(args) or 0)
    except CodecLMError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except BrokenPipeError:
        return _closed_stdout()
    except OSError as exc:  # the environment, not a bug: a folder that cannot be made, permissions...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


def generate_main(argv: list[str] | None = None, prog: str = "generate.py") -> int:
    """``generate.py``: the generation commands alone (music, clone, say, voice)."""
    return run(build_parser(("music", "voice"), prog, "Generate audio with codeclm pipelines."), argv)


def standalone_main(prog: str, description: str, add_arguments, argv: list[str] | None = None) -> int:
    """A one-command program (``train.py``, ``python -m codeclm.pipelines.export``): the parser
    ``add_arguments`` fills, run like every command."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    add_arguments(parser)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
