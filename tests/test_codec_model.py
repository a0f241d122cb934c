"""RVQ behaviour, training pass, save/load round trips and bad input of the codec."""

import json

import pytest
import torch

from codeclm.codec import Codec, CodecConfig
from codeclm.codec.quantizer import EMACodebook, ResidualVectorQuantizer, kmeans
from codeclm.errors import AudioError, CodesError, ConfigError

from conftest import tiny_codec_config


# -- residual vector quantization ---------------------------------------------------------------
def _clustered(n=2000, dim=8, centers=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 3
    return means[torch.randint(0, centers, (n,), generator=g)] + 0.05 * torch.randn(n, dim, generator=g)


def test_kmeans_finds_the_clusters():
    x = _clustered()
    means = kmeans(x, 16, 30, torch.Generator().manual_seed(0))
    err = (x[:, None] - means[None]).pow(2).sum(-1).min(-1).values.mean()
    assert err < 0.5  # noise variance is 8 * 0.05^2 = 0.02; a missed cluster costs ~36


def test_more_codebooks_quantize_better():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, 4, 32, kmeans_iters=10).train()
    x = torch.randn(4, 8, 250)
    for _ in range(3):
        rvq(x)
    rvq.eval()
    errors = [(rvq.decode(rvq.encode(x, n)) - x).pow(2).mean().item() for n in (1, 2, 3, 4)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.6 * errors[0]


def test_ema_update_moves_codebook_towards_data_and_revives_dead_codes():
    torch.manual_seed(0)
    book = EMACodebook(4, 8, decay=0.5, kmeans_init=False, dead_code_threshold=1.0)
    x = torch.randn(512, 4) + 10.0  # far from the N(0,1) initial codebook
    before = (book.embed - 10).abs().mean()
    for _ in range(5):
        book.update(x, book.encode(x))
    assert (book.embed - 10).abs().mean() < 0.5 * before
    assert (book.cluster_size >= 1.0).all()  # no dead code left


def test_straight_through_gradient_and_commitment_loss():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, 2, 16, kmeans_iters=5).train()
    x = torch.randn(2, 8, 50, requires_grad=True)
    out = rvq(x)
    assert out.codes.shape == (2, 2, 50) and out.quantized.shape == x.shape
    (out.quantized.sum() + out.commitment_loss).backward()
    # straight-through: d(quantized)/dx is identity, plus the commitment term
    assert x.grad is not None and torch.allclose(x.grad.mean(), torch.tensor(1.0), atol=0.05)
    assert out.commitment_loss > 0


def test_quantizer_dropout_samples_every_target_bandwidth():
    codec = Codec(tiny_codec_config())
    g = torch.Generator().manual_seed(0)
    seen = {codec.sample_n_q(g) for _ in range(50)}
    assert seen == {1, 2, 4}


def test_training_pass_shapes_and_gradients():
    torch.manual_seed(0)
    codec = Codec(tiny_codec_config(kmeans_init=True, kmeans_iters=3)).apply_weight_norm().train()
    wav = 0.3 * torch.randn(2, 1, 1000)
    out = codec(wav, n_q=2)
    assert out.audio.shape == wav.shape and out.codes.shape == (2, 2, 32) and out.n_q == 2
    (out.audio - wav).abs().mean().add(out.commitment_loss).backward()
    grads = [p.grad for p in codec.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_weight_norm_folds_into_saved_weights(tmp_path):
    torch.manual_seed(0)
    codec = Codec(tiny_codec_config()).apply_weight_norm().eval()
    wav = 0.3 * torch.randn(1, 1, 640)
    codes = codec.encode(wav)
    codec.save_pretrained(tmp_path / "m")
    keys = json.loads((tmp_path / "m" / "config.json").read_text())
    assert keys["model_type"] == "codeclm-codec"
    loaded = Codec.from_pretrained(tmp_path / "m")
    assert not any("parametrizations" in k for k in loaded.state_dict())
    assert torch.equal(loaded.encode(wav), codes)
    assert torch.allclose(loaded.decode(codes), codec.decode(codes), atol=1e-6)


# -- save / load ----------------------------------------------------------------------------------
def test_save_load_roundtrip_exact_and_fp16(tmp_path, tiny_codec):
    wav = 0.3 * torch.randn(1, 1, 3000)
    codes = tiny_codec.encode(wav)
    tiny_codec.save_pretrained(tmp_path / "fp32")
    again = Codec.from_pretrained(tmp_path / "fp32")
    assert torch.equal(again.encode(wav), codes) and torch.equal(again.decode(codes), tiny_codec.decode(codes))
    tiny_codec.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    half = Codec.from_pretrained(tmp_path / "fp16")
    assert (tmp_path / "fp16" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert (half.decode(codes) - tiny_codec.decode(codes)).abs().max() < 1e-2


def test_from_pretrained_errors(tmp_path, tiny_codec):
    with pytest.raises(ConfigError, match="no such model folder"):
        Codec.from_pretrained(tmp_path / "nope")
    tiny_codec.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="safetensors"):
        Codec.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="missing model.safetensors"):
        Codec.from_pretrained(tmp_path / "m")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"model_type": "codeclm-lm"}))
    with pytest.raises(ConfigError, match="codeclm-lm"):
        Codec.from_pretrained(tmp_path / "lm")
    with pytest.raises(ConfigError, match="unknown codec config keys"):
        CodecConfig.from_dict({"model_type": "codeclm-codec", "hop": 3})


def test_weights_from_another_config_are_refused(tmp_path, tiny_codec):
    tiny_codec.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["dimension"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="shape|match"):
        Codec.from_pretrained(tmp_path / "m")


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("wav, message", [
    (torch.zeros(1000), "batch, channels, samples"),
    (torch.zeros(1, 1000), "batch, channels, samples"),
    (torch.zeros(1, 1, 100, dtype=torch.long), "floating-point"),
    (torch.zeros(1, 2, 100), "1-channel"),
    (torch.zeros(1, 1, 0), "empty"),
    (torch.tensor([[[0.0, float("nan")]]]), "NaN"),
    (torch.tensor([[[0.0, float("inf")]]]), "NaN or infinite"),
    ([0.0, 1.0], "torch.Tensor"),
])
def test_encode_bad_input(tiny_codec, wav, message):
    with pytest.raises(AudioError, match=message):
        tiny_codec.encode(wav)


@pytest.mark.parametrize("codes, message", [
    (torch.zeros(1, 10, dtype=torch.long), "batch, n_q, frames"),
    (torch.zeros(1, 1, 10), "integer"),
    (torch.full((1, 1, 10), 64), "out of range"),
    (torch.full((1, 1, 10), -1), "out of range"),
    (torch.zeros(1, 5, 10, dtype=torch.long), "codebooks"),
])
def test_decode_bad_codes(tiny_codec, codes, message):
    with pytest.raises(CodesError, match=message):
        tiny_codec.decode(codes)


@pytest.mark.parametrize("bandwidth", [0, -3, float("nan"), 100.0, "6"])
def test_bad_bandwidth(tiny_codec, bandwidth):
    with pytest.raises(CodesError, match="bandwidth"):
        tiny_codec.encode(torch.zeros(1, 1, 64), bandwidth=bandwidth)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="power of two"):
        tiny_codec_config(bins=100)
    with pytest.raises(ConfigError, match="pad_mode"):
        tiny_codec_config(pad_mode="zeros")


def test_inference_only_folder_is_smaller_and_identical(tmp_path, tiny_codec):
    wav = 0.3 * torch.randn(1, 1, 2000)
    tiny_codec.save_pretrained(tmp_path / "full")
    tiny_codec.save_pretrained(tmp_path / "small", inference_only=True)
    size = lambda name: (tmp_path / name / "model.safetensors").stat().st_size  # noqa: E731
    assert size("small") < size("full")
    small = Codec.from_pretrained(tmp_path / "small")
    codes = tiny_codec.encode(wav)
    assert torch.equal(small.encode(wav), codes) and torch.equal(small.decode(codes), tiny_codec.decode(codes))
