"""Shared fixtures: tiny random codecs that build and run in milliseconds."""

import pytest
import torch

from codeclm.codec import Codec, CodecConfig


def tiny_codec_config(**overrides) -> CodecConfig:
    kw = dict(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, target_bandwidths=[4.5, 9.0, 18.0],
              kmeans_init=False, lstm_layers=1, sample_rate=24000)
    kw.update(overrides)
    return CodecConfig(**kw)


@pytest.fixture
def tiny_codec() -> Codec:
    torch.manual_seed(0)
    return Codec(tiny_codec_config()).eval()
