"""Compression: exact round trips, entropy coding, the CLI, and every bad input of issue #4."""

import io
import json
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.audio import load_audio, save_audio
from codeclm.codec import Codec, CodecConfig
from codeclm.compression import (compress_file, compress_tensor, decompress_file, decompress_tensor, entropy,
                                 read_info)
from codeclm.cli import main
from codeclm.compression.entropy import AdaptiveCodeModel
from codeclm.compression.format import MAGIC
from codeclm.errors import BitstreamError

SR = 24000


def make_codec(seed=0, **overrides) -> Codec:
    """A tiny codec (hop 32, 4 codebooks of 64) whose codebooks are k-means'd on a test signal."""
    torch.manual_seed(seed)
    kw = dict(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, target_bandwidths=[4.5, 9.0, 18.0],
              kmeans_init=True, kmeans_iters=3, lstm_layers=1, sample_rate=SR)
    kw.update(overrides)
    codec = Codec(CodecConfig(**kw)).train()
    with torch.no_grad():
        codec(signal(SR // 2, codec.channels, seed=seed)[None])
    return codec.eval()


def signal(n: int, channels: int = 1, seed: int = 0, sr: int = SR) -> torch.Tensor:
    """A gliding tone with noise: codes that are neither constant nor uniform."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    tone = 0.3 * torch.sin(2 * np.pi * 200 * t * (1 + 0.3 * torch.sin(2 * np.pi * 0.5 * t)))
    return torch.stack([tone * (1 - 0.3 * c) + 0.02 * torch.randn(n, generator=g) for c in range(channels)])


def reference(codec, wav, bandwidth):
    return codec.decode(codec.encode(wav[None], bandwidth))[0, :, : wav.shape[-1]]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for the module


@pytest.fixture(scope="module")
def codec(one_thread):
    return make_codec()


@pytest.fixture(scope="module")
def model_dir(codec, tmp_path_factory):
    return codec.save_pretrained(tmp_path_factory.mktemp("model") / "codec")


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- exact round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("bandwidth,length,chunk,block", [
    (4.5, 12_345, 0.1, 0.37), (9.0, 24_000, 0.05, 0.013), (18.0, 7_001, 1.0, 1.0), (None, 31, 0.2, 0.2)])
def test_tensor_roundtrip_is_exact(codec, bandwidth, length, chunk, block):
    wav = signal(length)
    data = compress_tensor(wav, codec, bandwidth, chunk_seconds=chunk, block_seconds=block)
    assert torch.equal(decompress_tensor(data, codec), reference(codec, wav, bandwidth))


def test_block_size_does_not_change_the_bitstream(codec):
    wav = signal(20_000)
    fid = bytes(range(16))
    streams = {compress_tensor(wav, codec, 9.0, chunk_seconds=0.1, block_seconds=b, file_id=fid)
               for b in (0.011, 0.1, 0.5, 2)}
    assert len(streams) == 1
    # without a fixed id each file gets its own random one: the files differ, the audio does not
    a, b = (compress_tensor(wav, codec, 9.0, chunk_seconds=0.1) for _ in range(2))
    assert a != b and torch.equal(decompress_tensor(a, codec), decompress_tensor(b, codec))


def test_stereo_roundtrip_is_exact():
    codec = make_codec(seed=3, channels=2)
    wav = signal(9_000, channels=2)
    assert torch.equal(decompress_tensor(compress_tensor(wav, codec, 9.0), codec), reference(codec, wav, 9.0))


def test_non_streamable_codec_falls_back_to_offline():
    codec = make_codec(seed=4, pad_mode="reflect")
    assert not codec.streamable
    wav = signal(5_000)
    assert torch.equal(decompress_tensor(compress_tensor(wav, codec, 18.0), codec), reference(codec, wav, 18.0))


def test_file_roundtrip_equals_offline_decode(codec, model_dir, tmp_path):
    src = save_audio(tmp_path / "in.wav", signal(30_001), SR, subtype="FLOAT")
    assert run_cli("compress", src, tmp_path / "x.cclm", "--model", model_dir, "-b", "9", "-q") == 0
    for ext in ("wav", "flac"):
        assert run_cli("decompress", tmp_path / "x.cclm", tmp_path / f"out.{ext}", "--model", model_dir, "-q") == 0
        wav, _ = load_audio(src)
        expected = save_audio(tmp_path / f"expected.{ext}", reference(codec, wav, 9.0), SR)
        assert np.array_equal(sf.read(tmp_path / f"out.{ext}")[0], sf.read(expected)[0])
    assert leftovers(tmp_path) == []


def test_resampled_stereo_file_matches_load_audio(codec, model_dir, tmp_path):
    src = tmp_path / "in.flac"
    sf.write(src, signal(44_100, channels=2, sr=44_100).numpy().T, 44_100)
    compress_file(src, tmp_path / "x.cclm", model=model_dir, bandwidth=18.0, chunk_seconds=0.3)
    decompress_file(tmp_path / "x.cclm", tmp_path / "out.wav", model=model_dir, subtype="FLOAT")
    wav, _ = load_audio(src, SR, 1)
    expected = reference(codec, wav, 18.0).clamp(-1, 1)
    assert np.array_equal(sf.read(tmp_path / "out.wav", dtype="float32")[0], expected[0].numpy())
    info = read_info(tmp_path / "x.cclm")
    assert (info["source_sample_rate"], info["source_channels"], info["num_samples"]) == (44_100, 2, 24_000)


def test_converting_the_input_is_said_unless_quiet(model_dir, tmp_path, capsys):
    src = tmp_path / "in.flac"
    sf.write(src, signal(44_100, channels=2, sr=44_100).numpy().T, 44_100)
    compress_file(src, tmp_path / "a.cclm", model=model_dir, quiet=False)
    note = capsys.readouterr().err
    assert "44100 Hz stereo" in note and f"{SR} Hz mono" in note and str(src) in note
    compress_file(src, tmp_path / "b.cclm", model=model_dir, quiet=True)
    same = tmp_path / "same.wav"
    save_audio(same, signal(4000), SR)
    compress_file(same, tmp_path / "c.cclm", model=model_dir, quiet=False)
    assert "note" not in capsys.readouterr().err  # quiet, or nothing to convert: no note


def test_stdin_stdout_pipeline(codec, model_dir, tmp_path):
    src = save_audio(tmp_path / "in.wav", signal(10_000), SR)
    cli = [sys.executable, "-m", "codeclm.cli"]
    coded = subprocess.run([*cli, "compress", "-", "-", "--model", str(model_dir)], input=src.read_bytes(),
                           capture_output=True, check=True).stdout
    assert coded[:4] == MAGIC
    audio = subprocess.run([*cli, "decompress", "-", "-", "--model", str(model_dir), "-q"], input=coded,
                           capture_output=True, check=True).stdout
    wav, _ = load_audio(src)
    expected = save_audio(tmp_path / "expected.wav", reference(codec, wav, 6.0), SR)
    assert np.array_equal(sf.read(io.BytesIO(audio))[0], sf.read(expected)[0])


def test_info_command(codec, model_dir, tmp_path, capsys):
    path = tmp_path / "x.cclm"
    path.write_bytes(compress_tensor(signal(9_600), codec, 9.0, chunk_seconds=0.1))
    assert run_cli("info", path) == 0
    text = capsys.readouterr().out
    assert "2 codebooks x 64 bins" in text and "9600 samples" in text and codec.identity()["sha256"] in text
    assert run_cli("info", path, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chunks"] == 4 and info["num_frames"] == 300 and info["bandwidth"] == 9.0


# -- entropy coding ------------------------------------------------------------------------------
def markov_codes(n_q, bins, frames, seed=0, repeat=0.3):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(bins)
    zipf = np.minimum(rng.zipf(1.3, (n_q, frames)) - 1, bins - 1)
    codes = np.zeros((n_q, frames), np.int64)
    for t in range(frames):
        codes[:, t] = np.where(rng.random(n_q) < repeat, codes[:, t - 1] if t else 0, perm[zipf[:, t]])
    return codes


@pytest.mark.parametrize("n_q,bins,chunk", [(1, 2, 7), (3, 64, 50), (10, 1024, 75), (2, 4096, 33)])
def test_entropy_coder_roundtrip_and_savings(n_q, bins, chunk):
    codes = markov_codes(n_q, bins, 600)
    enc, dec = AdaptiveCodeModel(n_q, bins), AdaptiveCodeModel(n_q, bins)
    payloads = [enc.encode_chunk(codes[:, i: i + chunk]) for i in range(0, codes.shape[1], chunk)]
    decoded = [dec.decode_chunk(p, min(chunk, codes.shape[1] - i)) for p, i in zip(payloads, range(0, 600, chunk))]
    assert np.array_equal(np.concatenate(decoded, 1), codes)
    if bins >= 64:
        assert sum(map(len, payloads)) * 8 < 0.8 * codes.size * np.log2(bins)


def test_entropy_coder_ageing_keeps_encoder_and_decoder_in_step(monkeypatch):
    monkeypatch.setattr(entropy, "UNIGRAM_LIMIT", 300)
    monkeypatch.setattr(entropy, "ROW_LIMIT", 5)
    codes = markov_codes(9, 256, 900, seed=2, repeat=0.6)
    enc, dec = AdaptiveCodeModel(9, 256), AdaptiveCodeModel(9, 256)
    for i in range(0, 900, 60):
        assert np.array_equal(dec.decode_chunk(enc.encode_chunk(codes[:, i: i + 60]), 60), codes[:, i: i + 60])
    assert enc.total.max() < 300 + 60 and np.array_equal(enc.bigram, dec.bigram)


def test_uniform_codes_cost_little_more_than_raw():
    codes = np.random.default_rng(0).integers(0, 1024, (8, 750))
    enc = AdaptiveCodeModel(8, 1024)
    bits = 8 * sum(len(enc.encode_chunk(codes[:, i: i + 75])) for i in range(0, 750, 75))
    assert bits < 1.01 * codes.size * 10


def test_choosing_modes_leaves_the_state_unchanged():
    model = AdaptiveCodeModel(4, 32)
    model.encode_chunk(markov_codes(4, 32, 40))
    before = model.clone()
    model.choose_modes(markov_codes(4, 32, 40, seed=1))
    for key, value in before.__dict__.items():
        assert np.array_equal(getattr(model, key), value), key


# -- bad input -----------------------------------------------------------------------------------
@pytest.fixture
def good_file(codec, tmp_path):
    path = tmp_path / "good.cclm"
    path.write_bytes(compress_tensor(signal(6_000), codec, 9.0, chunk_seconds=0.05))
    return path


def patched(data: bytes, offset: int, new: bytes, recrc: bool = True) -> bytes:
    """``data`` with ``new`` at ``offset`` in the header, the header CRC recomputed."""
    out = bytearray(data)
    out[offset: offset + len(new)] = new
    size = int.from_bytes(out[8:12], "little")
    if recrc:
        out[size - 4: size] = zlib.crc32(bytes(out[: size - 4])).to_bytes(4, "little")
    return bytes(out)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: b"", "empty"),
    (lambda d: b"RIFF" + d[4:], "not a .cclm file"),
    (lambda d: d[:3], "not a .cclm file"),
    (lambda d: d[:20], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d + b"\0", "unexpected bytes"),
    (lambda d: patched(d, 4, (7).to_bytes(2, "little")), "version 7 is not supported"),
    (lambda d: patched(d, 8, (10**9).to_bytes(4, "little"), recrc=False), "header size"),
    (lambda d: patched(d, 12, (0).to_bytes(4, "little"), recrc=False), "checksum"),
    (lambda d: patched(d, 12, (0).to_bytes(4, "little")), "sample_rate = 0"),
    (lambda d: patched(d, 28, (2**40).to_bytes(8, "little")), "only the last chunk may be short"),
    (lambda d: d[:120] + bytes([d[120] ^ 4]) + d[121:], "CRC32"),
    (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "whole-file checksum"),  # the trailer
    (lambda d: d[:-47] + bytes([d[-47] ^ 1]) + d[-46:], "CRC32"),  # the last chunk's payload
])
def test_corrupt_files_give_one_clear_error(codec, good_file, mutate, message):
    data = mutate(good_file.read_bytes())
    with pytest.raises(BitstreamError, match=message):
        decompress_tensor(data, codec, name=str(good_file))
    with pytest.raises(BitstreamError, match=message):
        read_info(data)


def test_lying_chunk_length_is_refused_before_allocation(codec, good_file):
    data = bytearray(good_file.read_bytes())
    header_size = int.from_bytes(data[8:12], "little")
    data[header_size + 4: header_size + 8] = (2**31).to_bytes(4, "little")
    with pytest.raises(BitstreamError, match="payload of 2147483648 bytes"):
        decompress_tensor(bytes(data), codec)


def test_other_model_is_refused(good_file, tmp_path):
    other = make_codec(seed=1).save_pretrained(tmp_path / "other")
    with pytest.raises(BitstreamError, match="compressed with model .* but the loaded model"):
        decompress_file(good_file, tmp_path / "out.wav", model=other)
    assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []


def test_bad_command_lines_fail_cleanly(model_dir, good_file, tmp_path, capsys):
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), SR)
    sf.write(tmp_path / "nan.wav", np.full((100, 1), np.nan, np.float32), SR, subtype="FLOAT")
    save_audio(tmp_path / "ok.wav", signal(2_000), SR)
    (tmp_path / "exists.cclm").write_bytes(b"keep me")
    cases = [
        (["compress", tmp_path / "missing.wav", tmp_path / "a.cclm"], "missing.wav: no such file"),
        (["compress", tmp_path, tmp_path / "a.cclm"], "is a directory"),
        (["compress", tmp_path / "text.wav", tmp_path / "a.cclm"], "text.wav: not a readable audio file"),
        (["compress", tmp_path / "empty.wav", tmp_path / "a.cclm"], "empty.wav: audio is empty"),
        (["compress", tmp_path / "nan.wav", tmp_path / "a.cclm"], "nan.wav: audio contains NaN"),
        (["compress", tmp_path / "ok.wav", tmp_path / "exists.cclm"], "exists.cclm: already exists"),
        (["compress", tmp_path / "ok.wav", tmp_path], "is a directory"),
        (["compress", tmp_path / "ok.wav", tmp_path / "no" / "a.cclm"], "does not exist"),
        (["compress", tmp_path / "ok.wav", tmp_path / "a.cclm", "-b", "1000"], "needs .* codebooks"),
        (["decompress", tmp_path / "ok.wav", tmp_path / "a.wav"], "ok.wav: not a .cclm file"),
        (["decompress", tmp_path / "exists.cclm", tmp_path / "a.wav"], "exists.cclm: not a .cclm file"),
        (["decompress", good_file, tmp_path / "a.xyz"], "unknown audio extension"),
        (["decompress", tmp_path, tmp_path / "a.wav"], "is a directory"),
        (["info", tmp_path / "empty.wav"], "not a .cclm file"),
    ]
    for argv, message in cases:
        assert main([str(a) for a in argv] + ["--model", str(model_dir)] * (argv[0] != "info")) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("codeclm: error: ") and "\n" not in err, err
        assert re.search(message, err), (message, err)
    assert (tmp_path / "exists.cclm").read_bytes() == b"keep me"
    assert not (tmp_path / "a.cclm").exists() and not (tmp_path / "a.wav").exists()
    assert leftovers(tmp_path) == []
    assert main(["compress", str(tmp_path / "ok.wav"), str(tmp_path / "exists.cclm"), "--model", str(model_dir),
                 "--force", "-q"]) == 0
    assert (tmp_path / "exists.cclm").read_bytes()[:4] == MAGIC


def test_interrupted_write_leaves_nothing(codec, good_file, tmp_path, monkeypatch):
    from codeclm.compression import api

    def boom(*a, **k):
        yield torch.zeros(1, 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_decode_chunks", boom)
    with pytest.raises(KeyboardInterrupt):
        decompress_file(good_file, tmp_path / "out.wav", model=codec)
    assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []
