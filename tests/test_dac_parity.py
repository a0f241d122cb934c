"""DAC: parity with transformers' DacModel on random weights (same codes, audio <= 1e-4), our folder
format, overlapping windows == one pass, no streaming, and the compress/decompress/info CLI."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")
from transformers import DacConfig as HFDacConfig  # noqa: E402
from transformers import DacModel  # noqa: E402

from codeclm.cli import main  # noqa: E402
from codeclm.codec import Codec, CompressionModel, DacCodec, load_model  # noqa: E402
from codeclm.codec.dac import decoder_receptive_field, encoder_receptive_field  # noqa: E402
from codeclm.compression.api import compress_tensor, decompress_tensor  # noqa: E402
from codeclm.errors import AudioError, CodesError, ConfigError  # noqa: E402
from codeclm.streaming import StreamingError  # noqa: E402

# descript/dac_16khz, dac_24khz, dac_44khz layouts (rates, strides), shrunk widths and codebooks
LAYOUTS = {
    "16khz": dict(sampling_rate=16000, downsampling_ratios=[2, 4, 5, 8], n_codebooks=4),
    "24khz": dict(sampling_rate=24000, downsampling_ratios=[2, 4, 5, 8], n_codebooks=3),
    "44khz": dict(sampling_rate=44100, downsampling_ratios=[2, 4, 8, 8], n_codebooks=3),
}


def hf_dac(layout: str, seed: int = 0, **overrides) -> DacModel:
    torch.manual_seed(seed)
    kw = dict(encoder_hidden_size=4, decoder_hidden_size=32, codebook_size=64, codebook_dim=4, **LAYOUTS[layout])
    kw.update(overrides)
    model = DacModel(HFDacConfig(**kw)).eval()
    with torch.no_grad():  # transformers' init gives every Snake alpha = 1: vary them, and the biases
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


def audio(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.1 * torch.randn(batch, 1, length, generator=g)).float()


def hf_roundtrip(model: DacModel, wav: torch.Tensor, n_q: int):
    hop = model.config.hop_length
    padded = torch.nn.functional.pad(wav, (0, (-wav.shape[-1]) % hop))  # what DacFeatureExtractor does
    with torch.no_grad():
        codes = model.encode(padded, n_quantizers=n_q).audio_codes
        return codes, model.decode(audio_codes=codes).audio_values[:, None]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_codes_and_audio_match_transformers_at_each_bandwidth(layout):
    hf = hf_dac(layout)
    codec = Codec.from_hf(hf)
    assert isinstance(codec, DacCodec) and isinstance(codec, CompressionModel)
    assert (codec.sample_rate, codec.hop_length, codec.num_codebooks) == (
        hf.config.sampling_rate, hf.config.hop_length, hf.config.n_codebooks)
    wav = audio(2, 9 * codec.hop_length + 123)
    for n_q in range(1, codec.num_codebooks + 1):
        ref_codes, ref_audio = hf_roundtrip(hf, wav, n_q)
        codes = codec.encode(wav, bandwidth=codec.bandwidth_of(n_q))
        assert codes.shape == (2, n_q, 10) and codes.dtype == torch.long
        assert torch.equal(codes, ref_codes)
        out = codec.decode(codes)
        assert out.shape == (2, 1, 10 * codec.hop_length)
        n = ref_audio.shape[-1]  # odd strides (16/24 kHz layouts) give a few samples less; we zero-fill
        assert (out[..., :n] - ref_audio).abs().max() <= 1e-4
        assert not out[..., n:].any()
    assert torch.equal(codec.encode(wav), codec.encode(wav, bandwidth=codec.bandwidth_of(codec.num_codebooks)))


def test_transformers_folder_weight_norm_and_dispatch(tmp_path):
    hf = hf_dac("44khz", seed=2)
    hf.save_pretrained(tmp_path / "dac_44khz")
    wav = audio(1, 4000)
    ref_codes, ref_audio = hf_roundtrip(hf, wav, 3)
    for codec in (Codec.from_hf(tmp_path / "dac_44khz"), DacCodec.from_hf(tmp_path / "dac_44khz"),
                  load_model(tmp_path / "dac_44khz")):
        assert isinstance(codec, DacCodec) and codec.config.name == "dac_44khz"
        assert torch.equal(codec.encode(wav), ref_codes)
    hf.apply_weight_norm()  # a model carrying weight norm (as when training) imports folded
    codec = Codec.from_hf(hf)
    assert torch.equal(codec.encode(wav), ref_codes)
    assert (codec.decode(ref_codes)[..., :ref_audio.shape[-1]] - ref_audio).abs().max() <= 1e-4
    with pytest.raises(ConfigError, match="expected a transformers DAC"):
        DacCodec.from_hf(transformers.EncodecModel(transformers.EncodecConfig(num_filters=4, hidden_size=16,
                                                                               upsampling_ratios=[4, 2])))


def test_save_pretrained_round_trip_in_our_format(tmp_path):
    codec = Codec.from_hf(hf_dac("24khz", seed=3))
    codec.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "codeclm-dac"
    for again in (load_model(tmp_path / "ours"), DacCodec.from_pretrained(tmp_path / "ours")):
        assert isinstance(again, DacCodec) and again.identity() == codec.identity()
        wav = audio(1, 5000)
        codes = codec.encode(wav)
        assert torch.equal(again.encode(wav), codes) and torch.equal(again.decode(codes), codec.decode(codes))
    with pytest.raises(ConfigError, match="codeclm-dac"):
        Codec.from_pretrained(tmp_path / "ours")  # the SEANet class refuses a DAC folder in one line
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="not a codec"):
        load_model(tmp_path / "bad")


@pytest.mark.parametrize("layout", ["24khz", "44khz"])
def test_overlapping_windows_equal_one_pass(layout):
    codec = Codec.from_hf(hf_dac(layout, seed=4))
    wav = audio(2, 61 * codec.hop_length - 7, seed=5)
    whole_codes, whole_audio = codec.encode(wav), None
    whole_audio = codec.decode(whole_codes)
    codec.config.window_frames = 6  # 62 frames > 6 + 2 * context: several windows
    codes = codec.encode(wav)
    assert torch.equal(codes, whole_codes)
    assert (codec.decode(codes) - whole_audio).abs().max() <= 1e-6


def test_bf16_decoder_keeps_codes_and_stays_close_to_fp32():
    """``set_decoder_dtype(torch.bfloat16)``: the encoder (so the codes) is untouched, decode still
    returns float32 audio, within bf16 rounding of the fp32 decode."""
    codec = Codec.from_hf(hf_dac("44khz", seed=6))
    wav = audio(1, 20 * codec.hop_length, seed=7)
    codes = codec.encode(wav)
    ref = codec.decode(codes)
    assert codec.set_decoder_dtype(torch.bfloat16) is codec
    assert codec.decoder.conv_in.weight.dtype == torch.bfloat16 and codec.encoder.conv_in.weight.dtype == torch.float32
    assert torch.equal(codec.encode(wav), codes)
    fast = codec.decode(codes)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    snr = 10 * torch.log10(ref.pow(2).mean() / (fast - ref).pow(2).mean())
    assert 20 < snr < 80, float(snr)  # bf16 rounding, not the same bits and not another signal
    codec.set_decoder_dtype(torch.float32)  # back to fp32 compute, on the rounded weights
    assert torch.allclose(codec.decode(codes), fast, atol=2e-2) and codec.decoder.conv_in.weight.dtype == torch.float32
    with pytest.raises(ConfigError, match="floating-point torch dtype"):
        codec.set_decoder_dtype(torch.int8)


def test_context_is_the_exact_receptive_field():
    codec = Codec.from_hf(hf_dac("44khz", seed=6))
    hop, cfg = codec.hop_length, codec.config
    lo, hi = encoder_receptive_field(cfg)
    wav = audio(1, 40 * hop, seed=7)
    with torch.inference_mode():
        base = codec.encoder(wav)
        # just outside: no effect at all; well inside: an effect (at the very edge it is a product of
        # ~20 edge taps, below float32 resolution: one frame in it can still round away on AVX-512
        # kernels, so the check keeps a margin of two frames there)
        for offset, inside in ((lo + 2 * hop, True), (lo - 1, False), (hi - 2 * hop, True), (hi + 1, False)):
            moved = wav.clone()
            moved[..., 20 * hop + offset] += 1.0
            assert bool((codec.encoder(moved)[..., 20] != base[..., 20]).any()) == inside
        dlo, dhi = decoder_receptive_field(cfg)
        codes = codec.encode(wav)
        base = codec.decoder(codec.quantizer.decode(codes))
        for frame, inside in ((20 - dhi + 2, True), (20 - dhi - 1, False), (20 - dlo - 2, True), (20 - dlo + 1, False)):
            moved = codes.clone()
            moved[..., frame] = (moved[..., frame] + 1) % codec.cardinality
            out = codec.decoder(codec.quantizer.decode(moved))
            assert bool((out[..., 20 * hop: 21 * hop] != base[..., 20 * hop: 21 * hop]).any()) == inside
    assert codec.context_frames() == (-(-max(-lo, hi - hop + 1) // hop), max(-dlo, dhi))


def test_interface_errors_and_no_streaming():
    codec = Codec.from_hf(hf_dac("16khz"))
    assert not codec.streamable and codec.lookahead > 0.1
    with pytest.raises(StreamingError, match="non-causal"):
        with codec.streaming():
            pass
    assert [codec.num_codebooks_for(codec.bandwidth_of(n)) for n in range(1, 5)] == [1, 2, 3, 4]
    assert codec.target_bandwidths == [codec.bandwidth_of(n) for n in range(1, 5)]
    with pytest.raises(CodesError, match="needs 5 codebooks"):
        codec.encode(audio(1, 1000), bandwidth=codec.bandwidth_of(5))
    with pytest.raises(AudioError, match="1-channel"):
        codec.encode(torch.zeros(1, 2, 1000))
    with pytest.raises(CodesError, match="out of range"):
        codec.decode(torch.full((1, 2, 3), 64))


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("folder_kind", ["ours", "transformers"])
def test_compress_decompress_info_cli(folder_kind, tmp_path, capsys):
    hf = hf_dac("44khz", seed=8)
    codec = Codec.from_hf(hf)
    model_dir = tmp_path / "dac"
    codec.save_pretrained(model_dir) if folder_kind == "ours" else hf.save_pretrained(model_dir)
    codec = load_model(model_dir)
    wav = audio(1, 23_456, seed=9)[0]
    src = tmp_path / "in.wav"
    sf.write(src, wav.numpy().T, codec.sample_rate, subtype="FLOAT")
    bw = codec.bandwidth_of(2)
    assert run_cli("compress", src, tmp_path / "x.cclm", "--model", model_dir, "-b", bw, "-q") == 0
    assert run_cli("decompress", tmp_path / "x.cclm", tmp_path / "out.wav", "--model", model_dir, "-q",
                   "--subtype", "FLOAT") == 0
    expected = codec.decode(codec.encode(wav[None], bandwidth=bw))[0, :, : wav.shape[-1]].clamp(-1, 1)
    assert np.array_equal(sf.read(tmp_path / "out.wav", dtype="float32")[0], expected[0].numpy())
    assert run_cli("info", tmp_path / "x.cclm", "--json") == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (info["num_codebooks"], info["num_samples"], info["hop_length"], info["bins"]) == (2, 23_456, 512, 64)
    assert info["model_sha256"] == codec.identity()["sha256"] and info["chunks"] >= 1
    data = compress_tensor(wav, codec, bw)  # in memory: the same codes, exactly
    assert torch.equal(decompress_tensor(data, codec), codec.decode(codec.encode(wav[None], bw))[0, :, :23_456])
    if folder_kind == "transformers":  # same name and weight hash once saved in our format: interchangeable
        codec.save_pretrained(tmp_path / "ours")
        assert run_cli("decompress", tmp_path / "x.cclm", tmp_path / "o1.wav", "--model", tmp_path / "ours", "-q",
                       "--subtype", "FLOAT") == 0
        assert np.array_equal(sf.read(tmp_path / "o1.wav", dtype="float32")[0], expected[0].numpy())
    other = tmp_path / "other"
    Codec.from_hf(hf_dac("44khz", seed=10)).save_pretrained(other)
    assert run_cli("decompress", tmp_path / "x.cclm", tmp_path / "o2.wav", "--model", other, "-q") == 1


def test_corrupt_dac_folders_are_refused_before_building(tmp_path):
    codec = Codec.from_hf(hf_dac("16khz", seed=11))
    codec.save_pretrained(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    for key, value, message in (("decoder_dim", 1 << 30, "decoder_dim must be an integer"),
                                ("n_q", "4", "n_q must be"), ("ratios", [2, 4, 5, 1000], "ratios must be"),
                                ("n_q", 5, "does not match the weights")):
        bad = tmp_path / f"bad_{key}_{value}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**config, key: value}))
        (bad / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
        with pytest.raises(ConfigError, match=message):
            load_model(bad)
