"""The frame codec's pitch codebook (model.pitch_codebook): code row 1 is YIN's pitch, the decoder
reads it, the harmonic branch plays it: harmonic-plus-noise on the inverse-STFT head's spectrum."""

import dataclasses
import json
import math

import pytest
import torch

from codeclm.codec.frame import FrameCodec, FrameCodecConfig
from codeclm.codec.harmonic import HarmonicHead, pitch_from_tokens, pitch_token_features, pitch_tokens, yin
from codeclm.errors import ConfigError

SR = 24000
HOP = 480
BINS = 1024


def voiced(n: int, f0: float = 140.0, seed: int = 0) -> torch.Tensor:
    """A glottal-like tone (partials falling 6 dB/octave) and a little noise ``[1, n]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / SR
    tone = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 20))
    return (0.1 * tone.float() + 0.003 * torch.randn(n, generator=g))[None]


def tiny(seed: int = 0, **overrides) -> FrameCodec:
    torch.manual_seed(seed)
    kw = dict(encoder_dim=32, encoder_layers=1, decoder_dim=48, decoder_layers=1, dimension=16, bins=BINS,
              target_bandwidths=[1.5, 3.0], kmeans_iters=2, harmonics=16, pitch_codebook=True, harmonic_bands=6)
    kw.update(overrides)
    codec = FrameCodec(FrameCodecConfig(**kw)).train()
    with torch.no_grad():
        codec(voiced(SR)[None])
        if codec.pitch_embed is not None:  # a trained decoder reads the pitch features
            codec.pitch_embed.weight.normal_(0, 0.3)
            codec.harmonic.out.bias.fill_(1.0)  # loud partials, so the branch dominates what the tests compare
    return codec.eval()


def test_pitch_tokens_round_trip_within_half_a_step():
    f0 = torch.exp(torch.linspace(math.log(50.0), math.log(600.0), 997))
    tokens = pitch_tokens(f0, torch.ones_like(f0, dtype=torch.bool), 50.0, 600.0, BINS)
    assert int(tokens.min()) == 1 and int(tokens.max()) == BINS - 1
    assert bool((tokens.diff() >= 0).all())
    back, voiced = pitch_from_tokens(tokens, 50.0, 600.0, BINS)
    step = math.log2(12.0) / (BINS - 2)  # octaves per step: 4.2 cents
    assert bool(voiced.all()) and float((back / f0).log2().abs().max()) <= step / 2 + 1e-6
    # out of range: clamped to the ends; unvoiced: token 0, whatever its f0
    edge = pitch_tokens(torch.tensor([20.0, 900.0, 200.0]), torch.tensor([True, True, False]), 50.0, 600.0, BINS)
    assert edge.tolist() == [1, BINS - 1, 0]
    assert pitch_from_tokens(edge, 50.0, 600.0, BINS)[1].tolist() == [True, True, False]
    exact = pitch_tokens(f0, torch.ones_like(f0, dtype=torch.bool), 50.0, 600.0, BINS, exact=True)
    assert bool(((exact - tokens).abs() <= 1).all())  # the row-invariant log2 may round a tie the other way


def test_pitch_token_features_are_zero_when_unvoiced_and_place_the_pitch():
    feats = pitch_token_features(torch.tensor([0, 1, 512, BINS - 1]), BINS)
    assert feats.shape == (4, 8)
    assert not bool(feats[0].any())
    assert feats[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert feats[1:, 1].tolist() == pytest.approx([0.0, 511 / 1022, 1.0])
    assert feats[2, 2].item() == pytest.approx(math.sin(math.pi * 511 / 1022))


def test_code_row_1_is_the_pitch_and_the_codes_stream_exactly():
    codec = tiny()
    assert codec.quantizer.n_q == codec.num_codebooks - 1  # one row is the pitch's
    wav = torch.cat([voiced(SR // 2, f0=180.0), 0.003 * torch.randn(1, SR // 2)], -1)[None]
    codes = codec.encode(wav, 3.0)
    assert codes.shape == (1, 6, 50)
    f0, on = pitch_from_tokens(codes[0, 1], 50.0, 600.0, BINS)
    assert bool(on[2:24].all()) and not bool(on[28:].any())  # the tone's frames, then noise
    assert float((f0[2:24] / 180.0).log2().abs().max()) < 0.01
    frames = torch.nn.functional.pad(wav[0], (HOP, 0)).unfold(-1, 2 * HOP, HOP)[0]
    ref_f0, ref_on = yin(frames, SR, 50.0, 600.0)
    ref = pitch_tokens(ref_f0, ref_on, 50.0, 600.0, BINS)  # YIN's batched kernels: a tie may round the other way
    assert int((codes[0, 1] - ref).abs().max()) <= 1 and float((codes[0, 1] == ref).float().mean()) > 0.9
    g = torch.Generator().manual_seed(1)
    with codec.streaming(1):  # any chunking: the offline codes and audio
        parts, i = [], 0
        while i < wav.shape[-1]:
            n = int(torch.randint(0, 1500, (1,), generator=g))
            parts.append(codec.encode(wav[..., i: i + n], 3.0))
            i += n
        parts.append(codec.flush(3.0))
    assert torch.equal(torch.cat(parts, -1), codes)
    audio = codec.decode(codes)
    with codec.streaming(1):
        pieces = [codec.decode(codes[..., i: i + 3]) for i in range(0, codes.shape[-1], 3)]
        pieces.append(codec.flush_decoder())
    assert torch.equal(torch.cat(pieces, -1), audio)


def test_training_pass_computes_the_inference_function():
    codec = tiny(seed=4)
    wav = torch.cat([voiced(SR // 2, f0=160.0), voiced(SR // 2, f0=330.0, seed=1)], -1)[None]  # a jump
    with torch.no_grad():
        out = codec(wav, n_q=codec.num_codebooks)
    exact = codec.decode(out.codes)[..., : wav.shape[-1]]
    assert torch.equal(out.codes[:, 1], codec.encode(wav)[:, 1]) or \
        int((out.codes[:, 1] - codec.encode(wav)[:, 1]).abs().max()) <= 1  # the pitch row: YIN's fast vs exact kernels
    assert (out.audio - exact).abs().max() < 1e-3 * exact.abs().max()  # float32 phases of high partials
    assert set(out.aux_losses) == {"amp"}


def test_the_decoder_plays_the_pitch_it_is_sent():
    codec = tiny(seed=1)
    codes = codec.encode(voiced(SR, f0=150.0)[None], 3.0)
    for f0 in (120.0, 240.0):  # the same spectral codes, another pitch row: the output's pitch follows
        other = codes.clone()
        token = pitch_tokens(torch.tensor(f0), torch.tensor(True), 50.0, 600.0, BINS)
        other[:, 1] = torch.where(codes[:, 1] > 0, token, codes[:, 1])
        audio = codec.decode(other)[0, 0]
        frames = audio[HOP * 5: HOP * 45].unfold(-1, 2 * HOP, HOP)
        found, on = yin(frames, SR, 50.0, 600.0)
        assert bool(on.float().mean() > 0.8)
        assert float((found[on] / f0).log2().abs().median()) < 0.02
    silent = codes.clone()
    silent[:, 1] = 0  # unvoiced: the harmonic branch is quiet
    assert codec.decode(silent).abs().mean() < 0.5 * codec.decode(codes).abs().mean()


def test_mix_splits_the_head_spectrum_between_partials_and_noise():
    head = HarmonicHead(8, HOP, SR, harmonics=6, f0_min=50.0, f0_max=600.0, bands=5)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.zero_()
        head.out.bias[:5] = torch.tensor([0.5, 0.25, 0.0, -0.25, -0.5])  # harmonic share falls with frequency
        head.out.bias[5:] = torch.tensor([0.0, 0.0, 0.0, 0.1, 0.1])  # +0.4 nats above the middle point
    n_bins = HOP + 1
    log_mag = torch.full((1, 2, n_bins), 2.0)
    log_mag[..., 200:] = 1.0  # 5 kHz and up: a darker spectrum
    f0 = torch.tensor([[200.0, 1100.0]])
    on = torch.tensor([[True, False]])
    amps, share, log_amp = head.mix(torch.zeros(1, 2, 8), log_mag, f0, on)
    bin_hz = SR / 2 / HOP  # 25 Hz
    alpha_points = torch.sigmoid(4 * head.out.bias[:5] + 1.1)
    freqs = torch.arange(1, 7) * 200.0
    alpha = torch.from_numpy(__import__("numpy").interp(freqs.numpy(), torch.linspace(0, SR / 2, 5).numpy(),
                                                        alpha_points.detach().numpy())).float()
    expected = alpha * torch.exp(2.0 + torch.tensor(math.log(2 / (2 * HOP)) + 0.5 * math.log(200.0 / bin_hz)))
    assert torch.allclose(amps[0, 0], expected, rtol=1e-4)  # below 6 kHz: no gain correction yet
    assert not bool(amps[0, 1].any())  # unvoiced: no partials, the head keeps its whole spectrum
    assert torch.equal(share[0, 1], torch.ones(n_bins))
    assert share[0, 0, 0].item() == pytest.approx(1 - alpha_points[0].item(), abs=1e-6)
    assert torch.allclose(log_amp[0, 0], expected.log(), atol=1e-4)
    exact = head.mix(torch.zeros(1, 2, 8), log_mag, f0, on, exact=True)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(exact, (amps, share, log_amp)))


def test_a_pitch_codebook_run_starts_from_a_codec_without_it(tmp_path):
    """init_from: a folder without the pitch codebook gives its encoder, decoder and the first
    codebooks (the last one's row goes to the pitch); a short decoder-only run trains and exports."""
    from codeclm.codec import load_model
    from codeclm.training.codec_task import _init_weights
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train

    plain = tiny(seed=3, harmonics=0, pitch_codebook=False, decoder_dim=32)
    folder = plain.save_pretrained(tmp_path / "plain")
    grown = FrameCodec(dataclasses.replace(plain.config, harmonics=16, pitch_codebook=True))
    _init_weights(str(folder), grown)
    assert torch.equal(grown.decoder.proj_in.weight, plain.decoder.proj_in.weight)
    assert len(grown.quantizer.layers) == len(plain.quantizer.layers) - 1
    assert not bool(grown.pitch_embed.weight.any())  # zero: the folder's decoder function at first
    wav = voiced(SR // 2)[None]
    codes, old = grown.eval().encode(wav, 3.0), plain.encode(wav, 3.0)
    assert torch.equal(codes[:, 0], old[:, 0]) and torch.equal(codes[:, 2:], old[:, 1:-1])
    overrides = [f"out_dir={tmp_path / 'run'}", "max_steps=8", "log_every=4", "valid_every=0", "ckpt_every=0",
                 "data.batch_size=4", "data.valid_items=4", "data.synthetic_items=16", "mixed_precision=no",
                 "model.encoder_dim=32", "model.encoder_layers=1", "model.decoder_dim=32", "model.decoder_layers=1",
                 "model.dimension=16", f"model.bins={BINS}", "model.target_bandwidths=[1.5,3.0]",
                 "model.kmeans_iters=2", "model.harmonics=16", "model.harmonic_bands=6", f"codec.init_from={folder}",
                 "optim.lr=2e-3", "data.train_manifest=null", "data.valid_manifest=null", "data.num_workers=0"]
    train(load_recipe("codec_frame_pitch", overrides))
    trained = load_model(tmp_path / "run" / "model")
    assert trained.config.pitch_codebook and torch.equal(trained.encode(wav, 3.0), codes)  # frozen: the same codes
    assert not torch.equal(trained.decoder.proj_in.weight, plain.decoder.proj_in.weight)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    amp = [x["train/amp"] for x in lines if "train/amp" in x]
    assert amp and all(math.isfinite(v) for v in amp) and not any("train/f0" in x for x in lines)
    assert load_model(tmp_path / "run" / "model_float16").config == trained.config


def test_bad_pitch_codebook_configs_are_refused():
    with pytest.raises(ConfigError, match="harmonic branch"):
        FrameCodecConfig(pitch_codebook=True)
    with pytest.raises(ConfigError, match="two codebooks"):
        FrameCodecConfig(pitch_codebook=True, harmonics=8, target_bandwidths=[0.5])
    with pytest.raises(ConfigError, match="harmonic_bands"):
        FrameCodecConfig(pitch_codebook=True, harmonics=8, harmonic_bands=1)
