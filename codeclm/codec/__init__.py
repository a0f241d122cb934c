"""Neural audio codecs behind one interface (:class:`CompressionModel`, :func:`load_model`).

``Codec``: SEANet autoencoder + residual vector quantization, exact streaming (EnCodec import).
``DacCodec``: Descript Audio Codec (transformers ``DacModel`` import), offline / windowed.
"""

from codeclm.codec.base import CompressionModel, from_hf, load_model
from codeclm.codec.config import CodecConfig
from codeclm.codec.dac import DacCodec, DacConfig
from codeclm.codec.model import Codec, CodecOutput

__all__ = ["Codec", "CodecConfig", "CodecOutput", "CompressionModel", "DacCodec", "DacConfig", "from_hf",
           "load_model"]
