"""The neural audio codec: SEANet autoencoder + residual vector quantization, exact streaming."""

from codeclm.codec.config import CodecConfig
from codeclm.codec.model import Codec, CodecOutput

__all__ = ["Codec", "CodecConfig", "CodecOutput"]
