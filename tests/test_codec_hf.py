"""Parity with transformers' EnCodec on random weights: same codes, same audio (<= 1e-4)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import EncodecConfig, EncodecModel  # noqa: E402

from codeclm.codec import Codec  # noqa: E402

LAYOUTS = {
    # EnCodec 24 kHz: causal, reflect padding, mono, LSTM
    "24khz_causal": dict(sampling_rate=24000, target_bandwidths=[4.5, 9.0, 18.0]),
    # MusicGen's 32 kHz EnCodec: non-causal
    "32khz_noncausal": dict(sampling_rate=32000, use_causal_conv=False, target_bandwidths=[6.0, 12.0]),
    # EnCodec 48 kHz: stereo, non-causal, time group norm, chunked with per-chunk loudness scales
    "48khz_stereo": dict(sampling_rate=48000, audio_channels=2, use_causal_conv=False, norm_type="time_group_norm",
                         normalize=True, chunk_length_s=0.01, overlap=0.01, target_bandwidths=[9.0, 18.0]),
}


def _hf_model(layout: str) -> EncodecModel:
    torch.manual_seed(0)
    cfg = EncodecConfig(num_filters=8, hidden_size=32, upsampling_ratios=[4, 4, 2], codebook_size=64,
                        **LAYOUTS[layout])
    model = EncodecModel(cfg).eval()
    with torch.no_grad():  # transformers initialises codebooks to zeros: give them content
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_()
    return model


def _hf_roundtrip(model, wav, bandwidth):
    with torch.no_grad():
        enc = model.encode(wav, bandwidth=bandwidth)
        audio = model.decode(enc.audio_codes, enc.audio_scales, last_frame_pad_length=enc.last_frame_pad_length)[0]
    codes = torch.cat(list(enc.audio_codes), -1)  # [chunks, B, K, F] -> [B, K, chunks*F]
    if enc.last_frame_pad_length:
        codes = codes[..., : codes.shape[-1] - enc.last_frame_pad_length]
    return codes, audio


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("length", [1024, 777])
def test_codes_and_audio_match_transformers(layout, length):
    hf = _hf_model(layout)
    codec = Codec.from_hf(hf)
    torch.manual_seed(1)
    wav = 0.2 * torch.randn(2, hf.config.audio_channels, length)
    for bandwidth in hf.config.target_bandwidths:
        ref_codes, ref_audio = _hf_roundtrip(hf, wav, bandwidth)
        codes, scales = codec.encode(wav, bandwidth=bandwidth, return_scales=True)
        assert codes.dtype == torch.long
        assert torch.equal(codes, ref_codes)
        audio = codec.decode(codes, scales)
        assert audio.shape == ref_audio.shape
        assert (audio - ref_audio).abs().max() <= 1e-4


def test_imported_model_saves_and_loads_with_our_format(tmp_path):
    hf = _hf_model("24khz_causal")
    codec = Codec.from_hf(hf)
    codec.save_pretrained(tmp_path / "enc")
    again = Codec.from_pretrained(tmp_path / "enc")
    wav = 0.2 * torch.randn(1, 1, 2000)
    assert torch.equal(codec.encode(wav, 9.0), again.encode(wav, 9.0))
    assert torch.equal(codec.decode(codec.encode(wav, 9.0)), again.decode(again.encode(wav, 9.0)))
    assert again.identity() == codec.identity()


def test_import_from_transformers_folder(tmp_path):
    hf = _hf_model("32khz_noncausal")
    hf.save_pretrained(tmp_path / "hf")
    codec = Codec.from_hf(tmp_path / "hf")
    wav = 0.2 * torch.randn(1, 1, 1500)
    ref_codes, _ = _hf_roundtrip(hf, wav, 12.0)
    assert torch.equal(codec.encode(wav, 12.0), ref_codes)


def test_bandwidth_mapping_matches_encodec():
    codec = Codec.from_hf(_hf_model("24khz_causal"))
    # 750 frames/s x 6 bits = 4.5 kbps per codebook
    assert [codec.num_codebooks_for(b) for b in (4.5, 9.0, 18.0)] == [1, 2, 4]
    assert codec.num_codebooks == 4
    assert codec.bandwidth_of(2) == pytest.approx(9.0)
