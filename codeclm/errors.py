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
