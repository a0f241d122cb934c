"""TextToMusic: transformers parity, folder round trip, seeded sampling, streaming, bad input."""

import json

import pytest
import torch

pytest.importorskip("transformers")
from test_musicgen_parity import (
    CARD,
    PROMPTS,
    K,
    hf_greedy_codes,
    tiny_musicgen,
    tiny_tokenizer,
)

from codeclm.errors import CodecLMError, ConfigError
from codeclm.pipelines import TextToMusic


@pytest.fixture(scope="module")
def hf_and_pipe():
    model, tok = tiny_musicgen(), tiny_tokenizer()
    return model, tok, TextToMusic.from_hf(model, tok)


@pytest.fixture(scope="module")
def saved(hf_and_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("music")
    hf_and_pipe[2].save_pretrained(folder)
    return folder


def test_generate_tokens_equals_transformers_greedy(hf_and_pipe):
    model, tok, pipe = hf_and_pipe
    ref, _ = hf_greedy_codes(model, tok, PROMPTS, 12, 3.0)
    ours = pipe.generate_tokens(PROMPTS, max_new_tokens=12, do_sample=False, guidance_scale=3.0)
    assert ours.shape == (2, K, 12 - (K - 1))
    assert torch.equal(ours, ref)


def test_from_hf_folder(hf_and_pipe, tmp_path):
    model, tok, pipe = hf_and_pipe
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = TextToMusic.from_hf(tmp_path)
    assert torch.equal(again.generate_tokens(PROMPTS, 10), pipe.generate_tokens(PROMPTS, 10))


def test_save_load_round_trip(hf_and_pipe, saved):
    pipe = hf_and_pipe[2]
    loaded = TextToMusic.from_pretrained(saved)
    assert loaded.sample_rate == pipe.sample_rate
    a = pipe.generate_tokens(PROMPTS, max_new_tokens=10, guidance_scale=3.0)
    b = loaded.generate_tokens(PROMPTS, max_new_tokens=10, guidance_scale=3.0)
    assert torch.equal(a, b)
    wa = pipe.generate(PROMPTS, duration=0.01, seed=3, top_k=10)
    wb = loaded.generate(PROMPTS, duration=0.01, seed=3, top_k=10)
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))


def test_seeded_sampling_is_reproducible(hf_and_pipe):
    pipe = hf_and_pipe[2]
    kw = dict(duration=0.02, top_k=20, temperature=1.5)
    a = pipe.generate(PROMPTS, seed=1, **kw)
    b = pipe.generate(PROMPTS, seed=1, **kw)
    c = pipe.generate(PROMPTS, seed=2, **kw)
    assert len(a) == 2 and a[0].shape == (1, round(0.02 * pipe.sample_rate)) and a[0].dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    ta = pipe.generate_tokens(PROMPTS, 14, do_sample=True, seed=5, top_k=20, temperature=2.0)
    assert torch.equal(ta, pipe.generate_tokens(PROMPTS, 14, do_sample=True, seed=5, top_k=20, temperature=2.0))


def test_stream_with_streamable_codec_matches_generate(hf_and_pipe, tiny_codec):
    pipe = hf_and_pipe[2]
    assert tiny_codec.streamable and tiny_codec.num_codebooks >= K and tiny_codec.cardinality == CARD
    streaming = TextToMusic(pipe.lm, tiny_codec, pipe.conditioner)
    duration = 12 / streaming.frame_rate
    chunks = list(streaming.stream("calm piano", duration=duration, seed=4, top_k=10))
    assert len(chunks) > 1  # audio comes out as frames complete
    full = streaming.generate(["calm piano"], duration=duration, seed=4, top_k=10)[0]
    assert torch.allclose(torch.cat(chunks, -1), full, atol=1e-5)
    # a non-streamable codec (imported EnCodec) decodes once at the end
    one = list(pipe.stream("calm piano", duration=duration, seed=4, top_k=10))
    assert len(one) == 1 and one[0].shape[-1] == 12 * pipe.codec.hop_length


def test_progress_bar_runs(hf_and_pipe):
    out = hf_and_pipe[2].generate(["jazz"], duration=0.01, progress=True)
    assert len(out) == 1


def test_bad_inputs(hf_and_pipe, saved, tmp_path):
    pipe = hf_and_pipe[2]
    for kwargs in (dict(prompts=[]), dict(prompts=PROMPTS, duration=0), dict(prompts=PROMPTS, duration=-1),
                   dict(prompts=PROMPTS, duration=10_000), dict(prompts=PROMPTS, guidance_scale=-1),
                   dict(prompts=PROMPTS, melody=torch.zeros(1, 100)), dict(prompts=[3])):
        with pytest.raises(CodecLMError) as info:
            pipe.generate(**{"duration": 0.01, **kwargs})
        assert "\n" not in str(info.value)
    with pytest.raises(CodecLMError, match="melody"):
        pipe.generate(PROMPTS, melody=torch.zeros(1, 100))
    with pytest.raises(ConfigError, match="missing"):
        TextToMusic.from_pretrained(tmp_path)  # empty folder
    with pytest.raises(ConfigError, match="no such"):
        TextToMusic.from_pretrained(tmp_path / "absent")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pipeline.json").write_text(json.dumps({"type": "text-to-speech"}))
    with pytest.raises(ConfigError, match="text-to-speech"):
        TextToMusic.from_pretrained(other)
    with pytest.raises(ConfigError):  # a codec folder is not a pipeline
        TextToMusic.from_pretrained(saved / "codec")


def test_default_checkpoint_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CODECLM_CHECKPOINTS", str(tmp_path))
    with pytest.raises(ConfigError, match="music"):
        TextToMusic.from_pretrained()


def test_codebook_temperatures_round_trip_and_bad_values(hf_and_pipe, tmp_path):
    """pipeline.json's codebook_temperatures: saved, loaded, applied (all-ones = no change,
    all-zero = greedy), and refused with one line when malformed."""
    pipe = hf_and_pipe[2]
    base = pipe.generate_tokens(PROMPTS, max_new_tokens=10, do_sample=True, seed=4)
    greedy = pipe.generate_tokens(PROMPTS, max_new_tokens=10, do_sample=False)
    try:
        pipe.codebook_temperatures = [1.0] * K
        assert torch.equal(pipe.generate_tokens(PROMPTS, max_new_tokens=10, do_sample=True, seed=4), base)
        pipe.codebook_temperatures = [0.0] * K
        assert torch.equal(pipe.generate_tokens(PROMPTS, max_new_tokens=10, do_sample=True, seed=4), greedy)
        pipe.save_pretrained(tmp_path / "m")
    finally:
        pipe.codebook_temperatures = None
    info = json.loads((tmp_path / "m" / "pipeline.json").read_text())
    assert info["codebook_temperatures"] == [0.0] * K
    assert TextToMusic.from_pretrained(tmp_path / "m").codebook_temperatures == [0.0] * K
    info["codebook_temperatures"] = [1.0]
    (tmp_path / "m" / "pipeline.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="codebook temperatures must be") as err:
        TextToMusic.from_pretrained(tmp_path / "m")
    assert "\n" not in str(err.value)
