"""Token cache: exact codes, resuming after a kill, identity checks, unreadable files."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.audio import load_audio
from codeclm.cli import main
from codeclm.codec import Codec
from codeclm.data.manifest import AudioRecord, write_manifest
from codeclm.data.tokens import TokenCache, tokenize_corpus
from codeclm.errors import AudioError, CodecLMError

BW = 9.0  # 2 codebooks of the tiny codec


@pytest.fixture
def corpus(tmp_path):
    """Three clips (16 kHz mono, 24 kHz stereo, 16 kHz mono) of different lengths, with transcripts."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    specs = [("a.wav", 16000, 1, 0.10), ("b.wav", 24000, 2, 0.20), ("c.wav", 16000, 1, 0.15)]
    records = []
    for name, sr, ch, dur in specs:
        data = 0.1 * rng.standard_normal((int(sr * dur), ch))
        sf.write(folder / name, data, sr)
        records.append(AudioRecord(str(folder / name), dur, sr, ch, text=f"say {name}", speaker="s1"))
    return write_manifest(records, folder / "manifest.jsonl"), records


def expected_codes(codec, path):
    wav, _ = load_audio(path, codec.sample_rate, codec.channels)
    with torch.inference_mode():
        return codec.encode(wav[None], bandwidth=BW)[0]


def test_reader_returns_exact_codes(tiny_codec, corpus, tmp_path):
    manifest, records = corpus
    # 200 frames per shard (at 750 Hz): a=75, b=150 close shard 0; c=113 goes to shard 1
    result = tokenize_corpus(manifest, tiny_codec, tmp_path / "cache", bandwidth=BW, shard_frames=200,
                             progress=False)
    assert (result.encoded, result.cached, result.shards, result.errors) == (3, 0, 2, [])
    cache = TokenCache(tmp_path / "cache")
    assert len(cache) == 3
    assert cache.meta["codec"] == tiny_codec.identity() and cache.meta["n_q"] == 2 and cache.meta["bins"] == 64
    assert [e["shard"] for e in cache.entries] == [0, 0, 1]
    for i, rec in enumerate(records):
        item = cache[i]
        assert item["codes"].dtype == torch.long
        assert torch.equal(item["codes"], expected_codes(tiny_codec, rec.path))
        assert item["text"] == rec.text and item["speaker"] == "s1" and item["path"] == rec.path
    assert torch.equal(cache[-1]["codes"], cache[2]["codes"])
    with pytest.raises(IndexError):
        cache[3]


def _snapshot(folder):
    cache = TokenCache(folder)
    index = (folder / "index.jsonl").read_text()
    return index, [cache[i]["codes"] for i in range(len(cache))]


def test_resume_after_kill_equals_uninterrupted_run(tiny_codec, corpus, tmp_path):
    manifest, _ = corpus
    full, killed = tmp_path / "full", tmp_path / "killed"
    tokenize_corpus(manifest, tiny_codec, full, bandwidth=BW, shard_frames=100, progress=False)

    class Killed(Exception):
        pass

    def kill(shard):
        raise Killed(shard)

    with pytest.raises(Killed):
        tokenize_corpus(manifest, tiny_codec, killed, bandwidth=BW, shard_frames=100, progress=False, on_commit=kill)
    # shards of >= 100 frames: [a (75) + b (150)], [c (113)]; the first was committed before the "kill"
    assert len(TokenCache(killed)) == 2
    result = tokenize_corpus(manifest, tiny_codec, killed, bandwidth=BW, shard_frames=100, progress=False)
    assert (result.cached, result.encoded, result.shards) == (2, 1, 1)
    index_full, codes_full = _snapshot(full)
    index_killed, codes_killed = _snapshot(killed)
    assert index_killed == index_full
    assert all(torch.equal(a, b) for a, b in zip(codes_full, codes_killed, strict=True))
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in full.iterdir())


def test_torn_index_line_and_orphan_shard_are_redone(tiny_codec, corpus, tmp_path):
    manifest, _ = corpus
    out = tmp_path / "cache"
    tokenize_corpus(manifest, tiny_codec, out, bandwidth=BW, shard_frames=100, progress=False)
    index_before, codes_before = _snapshot(out)
    lines = index_before.splitlines(keepends=True)
    # a kill after shard 1 (record c) was renamed into place but while its index line was being appended
    (out / "index.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
    assert len(TokenCache(out)) == 2  # the reader ignores the torn line
    result = tokenize_corpus(manifest, tiny_codec, out, bandwidth=BW, shard_frames=100, progress=False)
    assert (result.cached, result.encoded) == (2, 1)
    index_after, codes_after = _snapshot(out)
    assert index_after == index_before
    assert all(torch.equal(a, b) for a, b in zip(codes_before, codes_after, strict=True))


def test_other_codec_is_refused(tiny_codec, corpus, tmp_path):
    manifest, _ = corpus
    out = tmp_path / "cache"
    tokenize_corpus(manifest, tiny_codec, out, bandwidth=BW, progress=False)
    torch.manual_seed(1)
    other = Codec(tiny_codec.config).eval()
    with pytest.raises(CodecLMError, match="different codec"):
        tokenize_corpus(manifest, other, out, bandwidth=BW, progress=False)
    with pytest.raises(CodecLMError, match="different number of codebooks"):
        tokenize_corpus(manifest, tiny_codec, out, bandwidth=4.5, progress=False)
    result = tokenize_corpus(manifest, other, out, bandwidth=BW, resume=False, progress=False)
    assert result.encoded == 3 and TokenCache(out).meta["codec"] == other.identity()


def test_unreadable_file_counted_or_raised(tiny_codec, corpus, tmp_path):
    manifest, records = corpus
    bad = tmp_path / "corpus" / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    write_manifest([*records[:2], AudioRecord(str(bad), 1.0, 16000, 1)], manifest)
    result = tokenize_corpus(manifest, tiny_codec, tmp_path / "cache", bandwidth=BW, progress=False)
    assert result.encoded == 2 and [p for p, _ in result.errors] == [str(bad)]
    assert "1 unreadable" in result.summary()
    with pytest.raises(AudioError, match="bad.wav"):
        tokenize_corpus(manifest, tiny_codec, tmp_path / "cache2", bandwidth=BW, progress=False, fail_on_error=True)


def test_cli_tokenize(tiny_codec, corpus, tmp_path, capsys):
    manifest, records = corpus
    codec_dir = tiny_codec.save_pretrained(tmp_path / "codec")
    out = tmp_path / "cache"
    argv = ["data", "tokenize", "--codec", str(codec_dir), str(manifest), "-o", str(out), "-b", "9", "-q"]
    assert main(argv) == 0
    assert "3 records encoded" in capsys.readouterr().out
    assert main(argv) == 0
    assert "3 already cached" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["bandwidth"] == 9.0
    assert torch.equal(TokenCache(out)[1]["codes"], expected_codes(tiny_codec, records[1].path))
    assert main(argv[:-3] + ["-b", "4.5", "-q"]) == 1
    assert "different number of codebooks" in capsys.readouterr().err
