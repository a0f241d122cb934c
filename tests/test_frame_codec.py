"""The frame-rate codec (codeclm.codec.frame): exact streaming, training path, folders, compressor, trainer."""

import dataclasses
import json
import math

import pytest
import torch

from codeclm.codec import load_model
from codeclm.codec.frame import FrameCodec, FrameCodecConfig, dft_basis
from codeclm.compression import compress_tensor, decompress_tensor
from codeclm.errors import ConfigError
from codeclm.streaming import StreamingError

SR = 24000


def tiny(seed: int = 0, **overrides) -> FrameCodec:
    """A small frame codec (hop 480, 2+2 blocks) whose codebooks are k-means'd on a test signal."""
    torch.manual_seed(seed)
    kw = dict(encoder_dim=32, encoder_layers=2, decoder_dim=48, decoder_layers=2, dimension=16, bins=64,
              target_bandwidths=[0.9, 1.8], kmeans_iters=2)
    kw.update(overrides)
    codec = FrameCodec(FrameCodecConfig(**kw)).train()
    with torch.no_grad():
        codec(signal(SR)[None])
    return codec.eval()


def signal(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    tone = 0.3 * torch.sin(2 * math.pi * 220 * t * (1 + 0.2 * torch.sin(2 * math.pi * 0.7 * t)))
    return (tone + 0.03 * torch.randn(n, generator=g))[None]


@pytest.fixture(scope="module")
def codec():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny()
    torch.set_num_threads(threads)


def random_chunks(total: int, high: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    i = 0
    while i < total:
        n = int(torch.randint(0, high, (1,), generator=g))  # 0: an empty chunk is allowed
        yield i, i + n
        i += n


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_any_chunking_gives_the_offline_bits(codec, threads, batch):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wav = torch.stack([signal(SR + 1234, seed=s) for s in range(batch)])
        codes = codec.encode(wav, 1.8)
        audio = codec.decode(codes)
        assert codes.shape == (batch, codec.num_codebooks_for(1.8), math.ceil(wav.shape[-1] / 480))
        assert audio.shape == (batch, 1, codes.shape[-1] * 480)
        for seed in range(2):
            with codec.streaming(batch):  # a live loop: chunk in, audio out
                parts, pieces = [], []
                for a, b in random_chunks(wav.shape[-1], 2000, seed):
                    parts.append(codec.encode(wav[..., a:b], 1.8))
                    pieces.append(codec.decode(parts[-1]))
                parts.append(codec.flush(1.8))
                pieces.append(codec.decode(parts[-1]))  # after flush() the decoder's last call emits the final hop
                streamed, decoded = torch.cat(parts, -1), torch.cat(pieces, -1)
            assert torch.equal(streamed, codes)
            assert torch.equal(decoded, audio)
            with codec.streaming(batch):  # encode everything, then decode in other groupings
                parts = [codec.encode(wav[..., a:b], 1.8) for a, b in random_chunks(wav.shape[-1], 5000, seed + 1)]
                parts.append(codec.flush(1.8))
                codes_again = torch.cat(parts, -1)
                out = [codec.decode(codes_again[..., a:b]) for a, b in random_chunks(codes_again.shape[-1], 9, seed)]
                if sum(o.shape[-1] for o in out) < audio.shape[-1]:  # the grouping ended with an empty call
                    out.append(codec.decode(codes_again[..., :0]))
            assert torch.equal(torch.cat(out, -1), audio)
            with codec.streaming(batch):  # decode-only stream: frames in any grouping, then flush_decoder
                out = [codec.decode(codes[..., a:b]) for a, b in random_chunks(codes.shape[-1], 7, seed + 5)]
                out.append(codec.flush_decoder())
            assert torch.equal(torch.cat(out, -1), audio)
    finally:
        torch.set_num_threads(old)


def test_a_batch_item_does_not_depend_on_its_neighbours(codec):
    a, b = signal(9000, seed=1), signal(9000, seed=2)
    both = torch.stack([a, b])
    assert torch.equal(codec.encode(both)[1:], codec.encode(b[None]))
    codes = codec.encode(both)
    assert torch.equal(codec.decode(codes)[:1], codec.decode(codes[:1]))


def test_training_pass_computes_the_inference_function(codec):
    wav = signal(SR // 2)[None]
    with torch.no_grad():
        out = codec(wav, n_q=codec.num_codebooks)  # fast batched kernels (eval mode: no EMA update)
    with codec.streaming(1):  # the exact path's latent: equal up to float rounding (codes may flip on near ties)
        latent = codec.encoder(codec.frontend(wav), exact=True).transpose(1, 2)
    assert (out.latent - latent).abs().max() < 1e-4 * latent.abs().max()
    assert (out.codes[:, 0] == codec.encode(wav)[:, 0]).float().mean() > 0.8
    exact = codec.decode(out.codes)[..., : wav.shape[-1]]
    assert (out.audio - exact).abs().max() < 1e-5
    assert out.audio.shape == wav.shape


def test_latency_is_two_frames_and_the_first_hop_needs_the_next_frame(codec):
    assert codec.latency == pytest.approx(2 * 480 / SR)
    codes = codec.encode(signal(4800)[None])
    with codec.streaming(1):
        assert codec.decode(codes[..., :1]).shape[-1] == 0  # held until frame 1
        assert codec.decode(codes[..., 1:3]).shape[-1] == 2 * 480
        assert codec.flush_decoder().shape[-1] == 480
        with pytest.raises(StreamingError, match="after the stream's last decode"):
            codec.decode(codes[..., 3:])
    with codec.streaming(1):
        codec.encode(signal(4800)[None])
        codec.flush()
        with pytest.raises(StreamingError, match="after flush"):
            codec.encode(signal(480)[None])
        with pytest.raises(StreamingError, match="already called"):
            codec.flush()


def test_front_end_is_a_windowed_dft():
    hop = 480
    x = torch.randn(2 * hop, dtype=torch.float64)
    basis = dft_basis(2 * hop).double()[:, 0]
    spec = basis @ x
    window = torch.hann_window(2 * hop, periodic=True, dtype=torch.float64)
    ref = torch.fft.rfft(x * window)
    assert torch.allclose(spec[: hop + 1], ref.real, atol=1e-4)
    assert torch.allclose(spec[hop + 1:], ref.imag, atol=1e-4)


def test_head_windows_overlap_add_to_one():
    from codeclm.codec.frame import ISTFTHead

    head = ISTFTHead(8, 480)
    w = head.window
    assert torch.allclose(w[:480] + w[480:], torch.ones(480), atol=1e-6)


def test_folder_round_trip_fp16_and_load_model(codec, tmp_path):
    folder = codec.save_pretrained(tmp_path / "fc", dtype=torch.float16, inference_only=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "codeclm-frame-codec"
    loaded = load_model(folder)
    assert isinstance(loaded, FrameCodec)
    wav = signal(7000)[None]
    half = FrameCodec(codec.config)
    half.load_state_dict({k: v.half().float() for k, v in codec.state_dict().items()})
    half.eval()
    assert torch.equal(loaded.encode(wav), half.encode(wav))
    assert torch.equal(loaded.decode(loaded.encode(wav)), half.decode(half.encode(wav)))
    assert loaded.identity()["sha256"] != codec.identity()["sha256"]  # fp16 weights are other weights


def test_compressor_round_trip_is_exact(codec):
    wav = signal(13_001)
    data = compress_tensor(wav, codec, 1.8, chunk_seconds=0.1, block_seconds=0.23)
    ref = codec.decode(codec.encode(wav[None], 1.8))[0, :, : wav.shape[-1]]
    out = decompress_tensor(data, codec)
    assert out.shape == wav.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("key,value,match", [
    ("hop_length", 482, "multiple of 4"), ("channels", 2, "mono"), ("bins", 1000, "power of two"),
    ("decoder_layers", 1000, "decoder_layers"), ("target_bandwidths", [float("nan")], "target_bandwidths")])
def test_bad_configs_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        FrameCodecConfig(**{key: value})


def test_config_with_wrong_sizes_is_refused_before_building(codec, tmp_path):
    folder = codec.save_pretrained(tmp_path / "fc")
    config = json.loads((folder / "config.json").read_text())
    config["decoder_dim"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="decoder|shape"):
        load_model(folder)


def test_trainer_learns_and_exports(tmp_path):
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train

    overrides = [f"out_dir={tmp_path / 'run'}", "max_steps=12", "log_every=4", "valid_every=0", "ckpt_every=0",
                 "data.batch_size=4", "data.valid_items=4", "data.synthetic_items=16", "mixed_precision=no",
                 "model.encoder_dim=32", "model.encoder_layers=1", "model.decoder_dim=32", "model.decoder_layers=1",
                 "model.dimension=16", "model.bins=64", "model.target_bandwidths=[0.9,1.8]", "model.kmeans_iters=2",
                 "codec.disc_start_step=6", "codec.disc_filters=4", "optim.lr=2e-3", "data.train_manifest=null",
                 "data.valid_manifest=null", "data.num_workers=0", "codec.phase_weight=1.0", "codec.phase_windows=[256,512]",
                 "codec.disc_periods=[2,3]", "codec.disc_period_filters=2",  # both adversaries
                 "codec.stft_weight=1.0", "codec.stft_windows=[256,512]"]
    cfg = load_recipe("codec_frame", overrides)
    assert cfg.task == "frame_codec"
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mel = [x["train/mel"] for x in lines if "train/mel" in x]
    assert len(mel) >= 2 and all(math.isfinite(v) for v in mel)
    phase = [x["train/phase"] for x in lines if "train/phase" in x]  # the phase-derivative loss, in the balancer
    assert len(phase) == len(mel) and all(0 < v < 4 for v in phase)
    stft = [x["train/stft"] for x in lines if "train/stft" in x]  # the linear-frequency STFT loss, in the balancer
    assert len(stft) == len(mel) and all(0 < v < 20 for v in stft)
    assert any("train/disc" in x for x in lines)  # the adversary started at step 6
    model = load_model(tmp_path / "run" / "model")
    assert isinstance(model, FrameCodec)
    assert load_model(tmp_path / "run" / "model_float16").config == model.config


# -- the exact path's kernels: a row's bits never depend on the other rows in the call ---------------
LINEAR_SHAPES = [(965, 32), (32, 96), (96, 32), (16, 48), (48, 962), (384, 1152), (1152, 384), (128, 1024), (7, 5)]


QUICK_ROWS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 333]


@pytest.mark.parametrize("sweep", [pytest.param("quick"), pytest.param("full", marks=pytest.mark.slow)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", ["float32", "float16"])
def test_packed_linear_rows_do_not_depend_on_the_rows_around_them(threads, weights, sweep):
    from codeclm.codec.layers import pack_linear

    row_counts = QUICK_ROWS if sweep == "quick" else list(range(1, 65)) + [100, 333, 500]
    starts = (0, 97) if sweep == "quick" else (0, 3, 97)

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(threads)
    try:
        for k, n in LINEAR_SHAPES:
            w = torch.randn(n, k, generator=g) * 0.05
            if weights == "float16":  # a float16 folder loaded as float32: every weight a float16 number
                w = w.half().float()
            b, scale = torch.randn(n, generator=g), torch.rand(n, generator=g)
            x, other = torch.randn(600, k, generator=g), torch.randn(600, n, generator=g)
            with torch.inference_mode():
                plain, scaled = pack_linear(w, b), pack_linear(w, b, scale)
                assert plain.kind == ("fp16" if weights == "float16" else "onednn")
                ref = plain(x)
                ref_gelu, ref_add = plain(x, gelu=True), scaled(x, add=other)
                for m in row_counts:
                    for start in starts:  # where the rows sit in memory
                        rows = slice(start, start + m)
                        assert torch.equal(plain(x[rows].clone()), ref[rows]), (k, n, m, start)
                        assert torch.equal(plain(x[rows], gelu=True), ref_gelu[rows]), (k, n, m, start)
                        assert torch.equal(scaled(x[rows], add=other[rows]), ref_add[rows]), (k, n, m, start)
                exact = x.double() @ w.double().t() + b.double()  # the same function as a float32 linear
                assert (ref - exact).abs().max() < 1e-5 * (1 + exact.abs().max())
                assert torch.allclose(ref_gelu, torch.nn.functional.gelu(ref), atol=1e-6)
                assert torch.allclose(ref_add, other + scale * ref, atol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_packed_linear_is_repacked_when_the_weight_changes():
    from codeclm.codec.layers import pack_linear

    layer = torch.nn.Linear(32, 48)
    x = torch.randn(3, 32)
    with torch.inference_mode():
        first = pack_linear(layer.weight, layer.bias)
        assert pack_linear(layer.weight, layer.bias) is first  # cached
        assert torch.allclose(first(x), layer(x), atol=1e-6)
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: a new version
    with torch.inference_mode():
        again = pack_linear(layer.weight, layer.bias)
        assert again is not first
        assert torch.allclose(again(x), layer(x), atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_fft_rows_and_pointwise_do_not_depend_on_the_rows_around_them(threads):
    from codeclm.codec.layers import fft_rows, pointwise_exact

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    try:
        for n in (16, 64, 240, 960):  # short rows: MKL's one-row plan differs with several threads
            x = torch.randn(300, n, generator=g)
            spec = torch.fft.rfft(x)
            for m in (1, 2, 3, 17, 300):
                assert torch.equal(fft_rows(torch.fft.rfft, x[:m]), spec[:m])
                assert torch.equal(fft_rows(torch.fft.irfft, spec[:m], n=n), torch.fft.irfft(spec, n=n)[:m])
        for fn in (torch.exp, torch.sin, torch.nn.functional.gelu):
            x = torch.randn(40_000, generator=g)
            ref = pointwise_exact(fn, x)
            assert torch.allclose(ref, fn(x))
            for start, length in ((0, 1), (5, 63), (64, 481), (1000, 1152), (7, 32_700), (3, 39_000)):
                assert torch.equal(pointwise_exact(fn, x[start: start + length]), ref[start: start + length])
    finally:
        torch.set_num_threads(old)


def test_depthwise_taps_add_in_a_fixed_order(codec):
    """The block's depthwise conv (one product, explicit adds) gives a frame the same bits in any call."""
    block = codec.decoder.blocks[0]
    x = torch.randn(2, 40, block.norm.normalized_shape[0])
    with torch.inference_mode():
        with block.streaming(2):
            whole = block._exact(x)
        with block.streaming(2):
            parts = torch.cat([block._exact(x[:, a:b]) for a, b in ((0, 1), (1, 4), (4, 4), (4, 11), (11, 40))], 1)
    assert torch.equal(whole, parts)


@pytest.fixture(scope="module")
def codec16(codec):
    """The test codec with every weight a float16 number (as loaded from a float16 folder): the
    GEMMs take FBGEMM's float16-weight kernel."""
    half = FrameCodec(codec.config)
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in codec.state_dict().items()})
    return half.eval()


@pytest.mark.parametrize("threads", [1, 2])
def test_float16_weights_stream_the_offline_bits(codec16, threads):
    from codeclm.codec.frame import _linear_plan

    with torch.inference_mode():
        assert _linear_plan(codec16.decoder.blocks[0].pwconv1).kind == "fp16"
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wav = torch.stack([signal(SR // 2 + 777, seed=s) for s in range(2)])
        codes = codec16.encode(wav, 1.8)
        audio = codec16.decode(codes)
        with codec16.streaming(2):
            parts, pieces = [], []
            for a, b in random_chunks(wav.shape[-1], 1500, 3):
                parts.append(codec16.encode(wav[..., a:b], 1.8))
                pieces.append(codec16.decode(parts[-1]))
            parts.append(codec16.flush(1.8))
            pieces.append(codec16.decode(parts[-1]))
        assert torch.equal(torch.cat(parts, -1), codes)
        assert torch.equal(torch.cat(pieces, -1), audio)
        with codec16.streaming(1):  # one frame per call, batch 1 (the live 20 ms loop)
            one = [codec16.decode(codec16.encode(wav[:1, :, i: i + 480], 1.8)) for i in range(0, wav.shape[-1], 480)]
            one.append(codec16.decode(codec16.flush(1.8)))
        assert torch.equal(torch.cat(one, -1), codec16.decode(codec16.encode(wav[:1], 1.8)))
    finally:
        torch.set_num_threads(old)


def test_phase_features_stream_exactly_and_carry_the_phase():
    codec = tiny(seed=1, phase_features=True)
    assert codec.config.n_features == 3 * 481 + 4 * 121
    wav = signal(SR // 2)[None]
    codes = codec.encode(wav)
    with codec.streaming(1):
        parts = [codec.encode(wav[..., a:b]) for a, b in random_chunks(wav.shape[-1], 1500, 3)]
        parts.append(codec.flush())
    assert torch.equal(torch.cat(parts, -1), codes)
    # a steady tone and a delayed copy: the same long-window power, other phase features
    t = torch.arange(SR) / SR
    tone = (0.3 * torch.sin(2 * math.pi * 1000 * t))[None, None]
    delayed = (0.3 * torch.sin(2 * math.pi * 1000 * (t - 7 / SR)))[None, None]
    with torch.no_grad():
        a, b = codec.frontend(tone)[:, 5:], codec.frontend(delayed)[:, 5:]
    near = torch.arange(39, 42)  # the tone's bins (bin 40 = 1000 Hz; Hann main lobe)
    power, phase = near, torch.cat([481 + near, 962 + near])
    assert (a[..., power] - b[..., power]).abs().max() < 0.02
    assert (a[..., phase] - b[..., phase]).abs().max() > 0.5


def test_noise_phase_streams_exactly_and_breaks_the_frame_periodicity():
    from codeclm.codec.frame import noise_turns

    turns = noise_turns(0, 40, 481)
    assert turns.shape == (40, 481) and float(turns.min()) >= 0 and float(turns.max()) < 2 * math.pi
    assert torch.equal(noise_turns(17, 5, 481), turns[17:22])  # a frame's turns: its index only
    assert abs(float(turns.mean()) - math.pi) < 0.1 and float(turns.std()) > 1.6  # ~uniform (std 1.81)
    plain = tiny(seed=3)
    noisy = FrameCodec(dataclasses.replace(plain.config, noise_phase=True)).eval()
    noisy.load_state_dict(plain.state_dict())
    steady = torch.full((1, plain.num_codebooks, 30), 5, dtype=torch.long)  # the same frame 30 times
    hop = plain.hop_length
    a, b = plain.decode(steady)[0, 0], noisy.decode(steady)[0, 0]
    middle = slice(14 * hop, 24 * hop)  # past the decoder's receptive field (2 blocks of 7 frames)
    shifted = slice(15 * hop, 25 * hop)
    assert (a[middle] - a[shifted]).abs().max() < 1e-3 * a[middle].abs().max()  # without it: periodic at the frame rate
    assert (b[middle] - b[shifted]).abs().max() > 0.1 * b[middle].abs().max()
    codes = noisy.encode(signal(SR // 2)[None])
    audio = noisy.decode(codes)
    with noisy.streaming(1):
        pieces = [noisy.decode(codes[..., i: i + 4]) for i in range(0, codes.shape[-1], 4)]
        pieces.append(noisy.flush_decoder())
    assert torch.equal(torch.cat(pieces, -1), audio)
