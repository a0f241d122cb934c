"""The one exception family codeclm raises for bad input.

Every user-facing failure (a missing file, a corrupt bitstream, a tensor of the wrong shape) is a
``CodecLMError`` with a one-line message naming the thing and the problem, so the CLI can print it
and exit non-zero instead of showing a traceback from deep inside torch.
"""


class CodecLMError(Exception):
    """Base class of every error codeclm raises on purpose."""


class AudioError(CodecLMError, ValueError):
    """An audio file or tensor that cannot be used (missing, unreadable, empty, NaN...)."""


class ConfigError(CodecLMError, ValueError):
    """A model folder or configuration that is missing, malformed or of another kind of model."""


class CodesError(CodecLMError, ValueError):
    """Codes of the wrong shape, dtype or out of the codebook range."""


class BitstreamError(CodecLMError, ValueError):
    """A compressed file that is truncated, corrupt, or was made by another model/format version."""


class OutputExistsError(CodecLMError, FileExistsError):
    """An output that already exists and may not be replaced (pass ``force`` / ``--force``)."""

    def __init__(self, path) -> None:
        super().__init__(f"{path}: already exists (use --force to overwrite)")
        self.filename = str(path)

    def __str__(self) -> str:  # FileExistsError would format (errno, strerror)
        return str(self.args[0])


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while :func:`codeclm.fileio.cleanup_on_signals` was active: raised
    like Ctrl-C's KeyboardInterrupt so every ``finally`` removes its temporary files."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
