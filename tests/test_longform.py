"""Long-form generation window by window, and continuation of a clip: codes continuity at the seams."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("transformers")
from test_musicgen_parity import K, tiny_musicgen, tiny_tokenizer

from codeclm.errors import CodecLMError
from codeclm.pipelines import TextToMusic
from codeclm.pipelines.longform import (
    context_frames,
    encode_clip,
    generate_long,
    window_seed,
)

FR = 750.0  # frames per second of the tiny models (24 kHz, hop 32)


def sec(frames: int) -> float:
    return frames / FR


@pytest.fixture(scope="module")
def pipe() -> TextToMusic:
    return TextToMusic.from_hf(tiny_musicgen(), tiny_tokenizer())


@pytest.fixture
def causal_pipe(pipe, tiny_codec) -> TextToMusic:
    assert tiny_codec.streamable and tiny_codec.frame_rate == FR
    return TextToMusic(pipe.lm, tiny_codec, pipe.conditioner)


def test_three_windows_continue_from_the_tail(pipe):
    assert pipe.frame_rate == FR
    seen = []
    audio, codes, windows = generate_long(pipe, "calm piano", sec(44), sec(20), sec(8), seed=2, top_k=20,
                                          on_window=lambda j, c: seen.append(j), return_codes=True)
    assert seen == [0, 1, 2] and [w.shape[2] for w in windows] == [20, 20, 20]
    assert codes.shape == (1, K, 44) and codes.dtype == torch.long
    assert audio.shape == (1, round(sec(44) * pipe.sample_rate))
    # every continuation starts with the previous window's last `overlap` frames, exactly
    for prev, cur in itertools.pairwise(windows):
        assert torch.equal(cur[:, :, :8], prev[:, :, -8:])
    # and only the new frames are appended
    assert torch.equal(codes, torch.cat([windows[0], windows[1][:, :, 8:], windows[2][:, :, 8:]], 2))
    # decoded once from the concatenated codes
    assert torch.equal(audio, pipe._decode(codes, audio.shape[-1])[0])
    again = generate_long(pipe, "calm piano", sec(44), sec(20), sec(8), seed=2, top_k=20)
    assert torch.equal(audio, again)
    other = generate_long(pipe, "calm piano", sec(44), sec(20), sec(8), seed=3, top_k=20)
    assert not torch.equal(audio, other)


def test_windows_are_sampled_not_copied(pipe):
    _, _, windows = generate_long(pipe, "loud rock", sec(44), sec(20), sec(8), seed=0, top_k=50,
                                      temperature=2.0, return_codes=True)
    assert not torch.equal(windows[1][:, :, 8:], windows[0][:, :, 8:])
    assert window_seed(5, 0) == 5 and len({window_seed(5, j) for j in range(10)}) == 10


def test_one_window_equals_generate(pipe):
    a = generate_long(pipe, "jazz", 0.02, seed=4, top_k=10)
    b = pipe.generate(["jazz"], duration=0.02, seed=4, top_k=10)[0]
    assert torch.equal(a, b)
    assert context_frames(pipe) == pipe.lm.config.max_seq_len - (K - 1)


def test_seam_is_the_codecs_own(causal_pipe):
    """With a causal codec, the audio up to the first seam is the first window's decode: the later
    windows change nothing before it, so the seam adds no discontinuity of its own."""
    hop = causal_pipe.codec.hop_length
    audio, codes, windows = generate_long(causal_pipe, "calm piano", sec(44), sec(20), sec(8), seed=1,
                                          top_k=20, return_codes=True)
    first = causal_pipe._decode(windows[0])[0]
    assert torch.allclose(audio[:, : 20 * hop], first, atol=1e-5)
    two = causal_pipe._decode(codes[:, :, :32])[0]
    assert torch.allclose(audio[:, : 32 * hop], two, atol=1e-5)


def test_continuation_starts_with_the_clip(causal_pipe):
    sr = causal_pipe.sample_rate
    t = torch.arange(int(sec(30) * sr)) / sr
    clip = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None]
    clip_codes = encode_clip(causal_pipe, clip, sr)
    assert clip_codes.shape == (1, K, 30)
    # longer than one window: the clip, then windows prompted by the codes so far (at least 8
    # frames, as many as fit beside the window's new frames)
    audio, codes, windows = generate_long(causal_pipe, "calm piano", sec(80), sec(40), sec(8), seed=0,
                                          prompt_codes=clip_codes, return_codes=True)
    assert codes.shape[2] == 80 and torch.equal(codes[:, :, :30], clip_codes)
    assert [w.shape[2] for w in windows] == [40, 40]  # 8 of the clip + 32 new; 22 context + 18 new
    assert torch.equal(windows[0][:, :, :8], clip_codes[:, :, -8:])
    assert torch.equal(windows[1][:, :, :22], codes[:, :, 40:62])
    assert torch.equal(codes[:, :, 30:], torch.cat([windows[0][:, :, 8:], windows[1][:, :, 22:]], 2))
    # a short continuation is one window prompted by the whole clip
    _, short, (one,) = generate_long(causal_pipe, "calm piano", sec(50), prompt_codes=clip_codes, return_codes=True)
    assert torch.equal(one[:, :, :30], clip_codes) and short.shape[2] == 50
    # the output's audio begins as the codec's decode of the clip's codes
    assert torch.allclose(audio[:, : 30 * causal_pipe.codec.hop_length], causal_pipe._decode(clip_codes)[0], atol=1e-5)


def test_bad_arguments(pipe):
    with pytest.raises(CodecLMError, match="overlap"):
        generate_long(pipe, "jazz", sec(40), sec(10), sec(10))
    with pytest.raises(CodecLMError, match="context"):
        generate_long(pipe, "jazz", 1.0, window_seconds=1.0)
    with pytest.raises(CodecLMError, match="duration"):
        generate_long(pipe, "jazz", 0)
    with pytest.raises(CodecLMError, match="duration"):
        generate_long(pipe, "jazz", 10_000)
    clip = torch.zeros(1, K, 20, dtype=torch.long)
    with pytest.raises(CodecLMError, match="not shorter"):
        generate_long(pipe, "jazz", sec(20), prompt_codes=clip)
    with pytest.raises(CodecLMError, match="prompt_codes"):
        generate_long(pipe, "jazz", sec(40), prompt_codes=torch.zeros(1, K + 1, 5, dtype=torch.long))


def test_encode_clip_with_a_frame_codec():
    """Continuation with the shipped kind of codec (FrameCodec, no per-chunk loudness scales):
    the clip's codes are the codec's own, cut to the LM's codebooks."""
    from types import SimpleNamespace

    from test_frame_codec import tiny as tiny_frame_codec

    codec = tiny_frame_codec()
    pipe = SimpleNamespace(codec=codec, device=torch.device("cpu"), lm=SimpleNamespace(config=SimpleNamespace(n_q=2)))
    t = torch.arange(4800) / 24000
    clip = 0.5 * torch.sin(2 * torch.pi * 220 * t)[None]
    codes = encode_clip(pipe, clip, 24000)
    with torch.no_grad():
        assert torch.equal(codes, codec.encode(clip[None])[:, :2])
    assert codes.shape == (1, 2, 10) and codes.dtype == torch.long


def test_pipeline_window_seconds_is_the_default_window(causal_pipe, tmp_path):
    """pipeline.json's window_seconds sets the windows of long-form generation (a model trained on
    short crops drifts in windows far past its training length); an explicit window still wins."""
    import json

    from codeclm.errors import ConfigError

    pipe = causal_pipe
    try:
        pipe.window_seconds = sec(20)
        _, _, windows = generate_long(pipe, "calm piano", sec(50), seed=0, return_codes=True)
        assert [w.shape[2] for w in windows] == [20, 20, 20, 20]  # 20 new, then 8 of context + 12 new each
        _, _, explicit = generate_long(pipe, "calm piano", sec(50), sec(40), seed=0, return_codes=True)
        assert explicit[0].shape[2] == 40
        pipe.window_seconds = 10 * context_frames(pipe) / FR  # longer than the context: the context
        _, _, capped = generate_long(pipe, "calm piano", sec(30), seed=0, return_codes=True)
        assert [w.shape[2] for w in capped] == [30]
        pipe.window_seconds = sec(20)
        pipe.save_pretrained(tmp_path / "p")
        info = json.loads((tmp_path / "p" / "pipeline.json").read_text())
        assert info["window_seconds"] == pytest.approx(sec(20))
        assert TextToMusic.from_pretrained(tmp_path / "p").window_seconds == pytest.approx(sec(20))
        (tmp_path / "p" / "pipeline.json").write_text(json.dumps({**info, "window_seconds": -1}))
        with pytest.raises(ConfigError, match="window_seconds must be a positive number"):
            TextToMusic.from_pretrained(tmp_path / "p")
    finally:
        pipe.window_seconds = None
