"""The frame codec's harmonic oscillator branch (codeclm.codec.harmonic): pitch tracker, oscillator,
exact streaming, training pass, and starting a harmonic run from a codec folder without the branch."""

import dataclasses
import json
import math

import pytest
import torch

from codeclm.codec.frame import FrameCodec, FrameCodecConfig
from codeclm.codec.harmonic import harmonic_amplitudes, yin
from codeclm.errors import ConfigError

SR = 24000
HOP = 480


def tiny(seed: int = 0, **overrides) -> FrameCodec:
    torch.manual_seed(seed)
    kw = dict(encoder_dim=32, encoder_layers=1, decoder_dim=48, decoder_layers=1, dimension=16, bins=64,
              target_bandwidths=[0.9, 1.8], kmeans_iters=2, harmonics=24, pitch_features=True)
    kw.update(overrides)
    codec = FrameCodec(FrameCodecConfig(**kw)).train()
    with torch.no_grad():
        codec(voiced(SR)[None])
        if codec.harmonic is not None:
            codec.harmonic.out.bias[1:] = 1.0  # voiced, loud partials, so the branch dominates what the tests compare
    return codec.eval()


def voiced(n: int, f0: float = 140.0, seed: int = 0) -> torch.Tensor:
    """A glottal-like tone (partials falling 6 dB/octave) with a slow vibrato, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / SR
    phase = 2 * math.pi * f0 * (t + 0.02 / 0.9 * torch.sin(2 * math.pi * 0.9 * t))
    tone = sum(torch.sin(k * phase) / k for k in range(1, 20))
    return (0.1 * tone.float() + 0.003 * torch.randn(n, generator=g))[None]


def frames_of(wav: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(wav, (HOP, 0)).unfold(-1, 2 * HOP, HOP)


@pytest.mark.parametrize("f0", [62.0, 110.0, 197.5, 330.0, 520.0])
def test_yin_finds_the_fundamental_of_a_harmonic_tone(f0):
    t = torch.arange(SR) / SR
    tone = sum(torch.sin(2 * math.pi * k * f0 * t + k) * 0.8 ** k for k in range(1, 12))  # strong 2nd, 3rd partials
    est, voiced_ = yin(frames_of(tone[None])[0, 2:-2], SR, 50.0, 600.0)
    assert bool(voiced_.all())
    assert (est / f0 - 1).abs().max() < 0.005  # no octave errors, sub-sample period


def test_yin_calls_noise_and_silence_unvoiced():
    g = torch.Generator().manual_seed(1)
    noise = 0.1 * torch.randn(SR, generator=g)
    _, v_noise = yin(frames_of(noise[None])[0], SR, 50.0, 600.0)
    _, v_silent = yin(frames_of(torch.zeros(1, SR))[0], SR, 50.0, 600.0)
    assert v_noise.float().mean() < 0.05 and not bool(v_silent.any())
    with pytest.raises(ValueError, match="too short"):
        yin(torch.zeros(4, 300), SR, 50.0, 600.0)


def test_oscillator_is_a_phase_continuous_sine_at_the_predicted_pitch():
    codec = tiny()
    head = codec.harmonic
    f0 = 187.3
    with torch.no_grad():  # constant features: f0 from the logit's bias, only the first partial audible
        head.out.weight.zero_()
        share = math.log(f0 / 50.0) / math.log(12.0)
        head.out.bias[0] = math.log(share / (1 - share)) / 4  # the head's outputs are scaled by 4
        head.out.bias[1] = 30.0 / 4  # voiced
        head.out.bias[2] = (5.0 + math.log(0.25)) / 4  # amplitude 0.25
        head.out.bias[3:] = -100.0
    features = torch.randn(1, 30, 48)
    with head.streaming(1):
        audio = torch.cat([head.stream(features[:, :7], False), head.stream(features[:, 7:], True)], -1)[0, 0]
    t = torch.arange(audio.shape[-1], dtype=torch.float64) / SR
    ideal = 0.25 * torch.sin(2 * math.pi * f0 * t)
    assert audio.shape[-1] == 30 * HOP
    assert (audio.double() - ideal).abs().max() < 1e-3  # the running phase never jumps at a hop boundary


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_harmonic_codec_streams_the_offline_bits(dtype, tmp_path):
    codec = tiny(seed=2)
    if dtype is torch.float16:
        codec = FrameCodec.from_pretrained(codec.save_pretrained(tmp_path / "h16", dtype=dtype)).eval()
    wav = voiced(SR + 777, seed=3)[None].repeat(2, 1, 1)
    wav[1] *= 0.5
    codes = codec.encode(wav, 1.8)
    audio = codec.decode(codes)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        with codec.streaming(2):
            out, i = [], 0
            while i < codes.shape[-1]:
                n = int(torch.randint(0, 6, (1,), generator=g))
                out.append(codec.decode(codes[..., i: i + n]))
                i += n
            out.append(codec.flush_decoder())
        assert torch.equal(torch.cat(out, -1), audio)
    with codec.streaming(2):  # encode and decode live, 20 ms at a time
        pieces = [codec.decode(codec.encode(wav[..., i: i + HOP], 1.8)) for i in range(0, wav.shape[-1], HOP)]
        pieces.append(codec.decode(codec.flush(1.8)))
    assert torch.equal(torch.cat(pieces, -1), audio)


def test_training_pass_computes_the_inference_function_and_the_pitch_loss():
    codec = tiny(seed=4)
    wav = voiced(SR // 2, f0=160.0)[None]
    with torch.no_grad():
        out = codec(wav, n_q=codec.num_codebooks)
    exact = codec.decode(out.codes)[..., : wav.shape[-1]]
    assert (out.audio - exact).abs().max() < 1e-3 * exact.abs().max()  # float32 phases of high partials
    # the pitch loss is the octave distance to YIN's f0 on voiced frames: set the branch's f0 to 320 Hz
    with torch.no_grad():
        codec.harmonic.out.weight.zero_()
        share = math.log(320.0 / 50.0) / math.log(12.0)
        codec.harmonic.out.bias[0] = math.log(share / (1 - share)) / 4
        loss = codec(wav, n_q=codec.num_codebooks).aux_losses["f0"]
    assert loss == pytest.approx(1.0, abs=0.05)  # one octave above 160 Hz (the tone has a vibrato)


def test_harmonic_amplitudes_read_each_partial():
    t = torch.arange(2 * HOP) / SR
    f0 = torch.tensor([131.0, 207.0])
    amps = torch.tensor([[0.3, 0.1, 0.05, 0.02], [0.2, 0.02, 0.1, 0.01]])
    frames = torch.stack([sum(a * torch.sin(2 * math.pi * (k + 1) * f * t + k) for k, a in enumerate(row))
                          for f, row in zip(f0, amps)])
    measured = harmonic_amplitudes(frames, f0, SR, 4)
    assert measured.shape == (2, 4)
    assert ((measured - amps).abs() / amps).max() < 0.05  # leakage from the other partials: a few percent


def test_pitch_features_read_the_tone_and_stream_exactly():
    codec = tiny(seed=7)
    assert codec.config.n_features == 481 + 4 * 121 + 3
    wav = voiced(SR, f0=180.0)[None]
    feats = codec.frontend(wav)[0, 3:-1, -3:] / 4  # voiced, log2(f0 / 50) / log2(12), periodicity
    assert bool((feats[:, 0] == 1).all()) and bool((feats[:, 2] > 0.8).all())
    f0 = 50.0 * 2 ** (feats[:, 1] * math.log2(12.0))
    assert ((f0 / 180.0).log2().abs() < 0.2).all()  # the vibrato moves it +-13 %
    bounds = [0, 480, 1920, 2400, 7200, SR]  # the front end takes whole hops (the codec buffers the rest)
    with codec.streaming(1):
        exact = torch.cat([codec.frontend(wav[..., a:b]) for a, b in zip(bounds, bounds[1:])], 1)
    with torch.no_grad():
        whole = codec.frontend(wav, exact=True)
    assert torch.equal(exact, whole)


def test_bad_harmonic_configs_are_refused():
    with pytest.raises(ConfigError, match="harmonics"):
        FrameCodecConfig(harmonics=-1)
    with pytest.raises(ConfigError, match="f0_min"):
        FrameCodecConfig(harmonics=8, f0_min=700.0, f0_max=600.0)
    with pytest.raises(ConfigError, match="longer hop"):
        FrameCodecConfig(harmonics=8, hop_length=160, f0_min=30.0)


def test_a_harmonic_run_starts_from_a_folder_without_the_branch(tmp_path):
    from codeclm.training.codec_task import _init_weights

    plain = tiny(seed=5, harmonics=0, pitch_features=False)
    folder = plain.save_pretrained(tmp_path / "plain", inference_only=True)
    extended = FrameCodec(dataclasses.replace(plain.config, harmonics=24, pitch_features=True))
    fresh = extended.harmonic.out.weight.clone()
    _init_weights(str(folder), extended)
    assert torch.equal(extended.decoder.proj_in.weight, plain.decoder.proj_in.weight)
    assert torch.equal(extended.quantizer.layers[0].embed, plain.quantizer.layers[0].embed)
    assert torch.equal(extended.harmonic.out.weight, fresh)  # the new branch keeps its initial weights
    grown = extended.encoder.proj_in.weight  # the pitch features' input columns start at zero: the same codes
    assert grown.shape[1] == plain.encoder.proj_in.weight.shape[1] + 3 and not bool(grown[:, -3:].any())
    wav = voiced(SR // 2)[None]
    assert torch.equal(extended.eval().encode(wav), plain.encode(wav))
    other = FrameCodec(dataclasses.replace(plain.config, decoder_dim=64))
    with pytest.raises(ConfigError, match="another architecture"):
        _init_weights(str(folder), other)


def test_a_decoder_only_run_keeps_the_codes_and_learns_the_pitch(tmp_path):
    """codec.freeze: encoder and codebooks stay as the folder had them (the same codes, so models
    trained on its tokens still decode), the decoder and the harmonic branch train."""
    from codeclm.codec import load_model
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train

    start = tiny(seed=6, harmonics=0, encoder_layers=1, decoder_layers=1, decoder_dim=32)
    folder = start.save_pretrained(tmp_path / "start")
    overrides = [f"out_dir={tmp_path / 'run'}", "max_steps=16", "log_every=4", "valid_every=0", "ckpt_every=0",
                 "data.batch_size=4", "data.valid_items=4", "data.synthetic_items=16", "mixed_precision=no",
                 "model.encoder_dim=32", "model.encoder_layers=1", "model.decoder_dim=32", "model.decoder_layers=1",
                 "model.dimension=16", "model.bins=64", "model.target_bandwidths=[0.9,1.8]", "model.kmeans_iters=2",
                 "model.harmonics=8", f"codec.init_from={folder}", "codec.freeze=[frontend,encoder,quantizer]",
                 "codec.adv_weight=0", "codec.feat_weight=0", "optim.lr=2e-3", "data.train_manifest=null",
                 "data.valid_manifest=null", "data.num_workers=0"]
    train(load_recipe("codec_frame_harmonic", overrides))
    trained = load_model(tmp_path / "run" / "model")
    assert torch.equal(trained.encoder.proj_in.weight, start.encoder.proj_in.weight)
    assert torch.equal(trained.quantizer.layers[1].embed, start.quantizer.layers[1].embed)
    assert not torch.equal(trained.decoder.proj_in.weight, start.decoder.proj_in.weight)
    wav = voiced(SR // 2)[None]
    assert torch.equal(trained.encode(wav), start.encode(wav))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["train/f0"]) for x in lines if "train/f0" in x) and any("train/f0" in x for x in lines)
    with pytest.raises(ConfigError, match="no submodule 'encoder_x'"):
        train(load_recipe("codec_frame_harmonic", overrides + ["codec.freeze=[encoder_x]"]))


def test_lr_mult_gives_a_new_branch_its_own_learning_rate():
    """optim.lr_mult: the parameters under a name prefix form their own AdamW group at lr * mult (the
    longest prefix wins), in module.parameters() order, so checkpoints without it keep their layout."""
    from codeclm.training.config import load_recipe
    from codeclm.training.task import lr_groups

    codec = tiny(seed=7, harmonics=8)
    groups = lr_groups(codec, 1e-3, {"harmonic": 20.0, "harmonic.out.bias": 5.0})
    by_lr = {g["lr"]: g["params"] for g in groups}
    assert set(by_lr) == {1e-3, 2e-2, 5e-3}
    assert by_lr[2e-2] == [codec.harmonic.out.weight] and by_lr[5e-3] == [codec.harmonic.out.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(codec.parameters()))
    opt = torch.optim.AdamW(groups)
    codec.harmonic.out.weight.grad = torch.ones_like(codec.harmonic.out.weight)
    before = codec.harmonic.out.weight.detach().clone()
    opt.step()  # Adam's first step moves each weight by its group's lr
    assert torch.allclose(before - codec.harmonic.out.weight.detach(), torch.full_like(before, 2e-2), rtol=1e-3)
    with pytest.raises(ConfigError, match="no parameter name starts with 'harmonik'"):
        lr_groups(codec, 1e-3, {"harmonik": 2.0})
    with pytest.raises(ConfigError, match="positive number"):
        lr_groups(codec, 1e-3, {"harmonic": 0})
    cfg = load_recipe("codec_frame_harmonic", ["optim.lr_mult.harmonic=30"])
    assert cfg.optim.lr_mult == {"harmonic": 30.0}
