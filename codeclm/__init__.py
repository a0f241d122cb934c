"""codeclm: audio generation with neural codecs and token language models."""

__version__ = "0.1.0"

from codeclm.errors import AudioError, BitstreamError, CodecLMError, CodesError, ConfigError

__all__ = ["CodecLMError", "AudioError", "ConfigError", "CodesError", "BitstreamError", "__version__"]
