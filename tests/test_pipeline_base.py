"""The one pipeline base: pipeline.json reader/writer checks, the type registry, the audio-argument
helper, and device / seeding / progress shared by every pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from codeclm.errors import AudioError, ConfigError
from codeclm.pipelines.core import (PIPELINES, BasePipeline, audio_argument, pipeline_class, pipeline_type,
                                    read_pipeline_info, write_pipeline_info)


def test_writer_and_reader_agree_and_check_what_they_store(tmp_path):
    info = write_pipeline_info(tmp_path, "voice-clone", languages=["en"], max_duration=30)
    assert info == {"type": "voice-clone", "format": 1, "languages": ["en"], "max_duration": 30}
    assert read_pipeline_info(tmp_path, "voice-clone") == info and read_pipeline_info(tmp_path) == info
    assert pipeline_type(tmp_path) == "voice-clone"
    with pytest.raises(ConfigError, match="holds a 'voice-clone' pipeline, not 'dia'"):
        read_pipeline_info(tmp_path, "dia")
    with pytest.raises(ConfigError, match="missing valle/"):
        read_pipeline_info(tmp_path, "voice-clone", ("valle",))
    for bad, msg in [({"format": 2}, "format 2"), ({"max_duration": -1}, "max_duration"),
                     ({"languages": "en"}, "languages"), ({"languages": [1]}, "language codes"),
                     ({"codec_identity": {"name": "x"}}, "codec_identity"), ({"defaults": [1]}, "defaults")]:
        with pytest.raises(ConfigError, match=msg):  # never written ...
            write_pipeline_info(tmp_path / "w", "dia", **bad)
        assert not (tmp_path / "w" / "pipeline.json").exists()
        (tmp_path / "pipeline.json").write_text(json.dumps({"type": "dia", **bad}))
        with pytest.raises(ConfigError, match=msg) as e:  # ... and refused on read, in one line
            read_pipeline_info(tmp_path)
        assert "\n" not in str(e.value)
    (tmp_path / "pipeline.json").write_text("[1]")
    with pytest.raises(ConfigError, match="invalid pipeline description"):
        read_pipeline_info(tmp_path)
    (tmp_path / "w").mkdir()
    with pytest.raises(ConfigError, match="not a pipeline folder"):
        read_pipeline_info(tmp_path / "w")
    assert pipeline_type(tmp_path / "w") is None


def test_writer_records_the_codec_identity(tmp_path):
    from codeclm.codec import Codec
    from conftest import tiny_codec_config

    torch.manual_seed(0)
    codec = Codec(tiny_codec_config())
    codec.save_pretrained(tmp_path / "codec")
    info = write_pipeline_info(tmp_path, "text-to-music", tmp_path / "codec")
    assert info["codec_identity"] == codec.identity() and read_pipeline_info(tmp_path)["codec_identity"] == codec.identity()


def test_registry_is_lazy_and_keyed_by_type():
    from codeclm.pipelines import TextToMusic, VoiceClone
    from codeclm.pipelines.dia import DiaVoiceClone

    assert set(PIPELINES) == {"text-to-music", "voice-clone", "dia"}
    assert all(":" in v and not v.endswith(":") for v in PIPELINES.values())
    assert pipeline_class("text-to-music") is TextToMusic and pipeline_class("voice-clone") is VoiceClone
    assert pipeline_class("dia") is DiaVoiceClone
    assert all(issubclass(c, BasePipeline) and pipeline_class(c.kind) is c for c in (TextToMusic, VoiceClone, DiaVoiceClone))
    with pytest.raises(ConfigError, match="unknown pipeline type 'tts'"):
        pipeline_class("tts")


def test_export_uses_the_registry(tmp_path):
    from codeclm.pipelines.export import export

    write_pipeline_info(tmp_path / "src", "tts") if (tmp_path / "src").mkdir() is None else None
    with pytest.raises(ConfigError, match="unknown pipeline type 'tts'"):
        export(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_audio_argument_path_tensor_or_tensor_and_rate(tmp_path):
    import soundfile as sf

    t = torch.linspace(0, 1, 16000)
    wav = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 220 * t)]) * 0.5
    sf.write(tmp_path / "a.wav", wav.T.numpy(), 16000)
    from_path = audio_argument(tmp_path / "a.wav", 16000)
    assert from_path.shape == (2, 16000) and torch.allclose(from_path, wav, atol=1e-4)
    assert torch.equal(audio_argument(wav, 16000, default_rate=16000), wav)
    assert audio_argument(wav, 8000, 1, default_rate=16000).shape == (1, 8000)  # mixed down and resampled
    assert torch.allclose(audio_argument((wav, 16000), 8000), audio_argument(tmp_path / "a.wav", 8000), atol=1e-3)
    assert audio_argument(wav[0], 16000, default_rate=16000).shape == (1, 16000)  # [N] is mono
    for bad, msg in [(torch.zeros(3, 2, 2), "tensor"), (torch.zeros(2, 5, dtype=torch.long), "tensor"),
                     (torch.full((1, 9), float("nan")), "NaN"), ((wav, -1), "sample rate"), ("nope.wav", "nope.wav")]:
        with pytest.raises(AudioError, match=msg):
            audio_argument(bad, 16000, name="ref", default_rate=16000)
    with pytest.raises(AudioError, match="needs its sample rate"):
        audio_argument(wav, 16000)


class _Tiny(BasePipeline):
    kind = "tiny"

    def __init__(self):
        self.a, self.b = torch.nn.Linear(2, 2), None

    def _modules(self):
        return [self.a, self.b]


def test_base_device_seeding_and_progress():
    p = _Tiny()
    assert p.to("cpu") is p and p.device == torch.device("cpu")
    g1, g2 = p._generator(7), p._generator(7)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    assert p._generator(None).initial_seed() == 0 and p._generator(3, do_sample=False) is None
    with p._progress(False) as cb:
        assert cb is None
    with p._progress(True, 3) as cb:
        cb(1, 3)
        cb(2, 3)


def test_export_swaps_in_a_codec_only_when_it_gives_the_same_codes(tmp_path):
    """``export --codec``: a decoder fine-tune (same encoder and quantizer) is shipped with the
    LM untouched; a codec whose encoder differs is refused and nothing is written."""
    from conftest import load_benchmark

    from codeclm.codec import load_model
    from codeclm.pipelines import TextToMusic
    from codeclm.pipelines.export import export

    pipe = load_benchmark("music_adherence").tiny_pipeline()
    pipe.save_pretrained(tmp_path / "src", None)
    codec = pipe.codec
    with torch.no_grad():  # another decoder: the same codes, other audio
        for p in codec.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    codec.save_pretrained(tmp_path / "decoder_ft")
    with torch.no_grad():  # another encoder: other codes
        for p in codec.encoder.parameters():
            p.copy_(torch.randn_like(p))
    codec.save_pretrained(tmp_path / "encoder_ft")

    out = export(tmp_path / "src", tmp_path / "dst", "float32", codec=tmp_path / "decoder_ft")
    shipped, new = TextToMusic.from_pretrained(out), load_model(tmp_path / "decoder_ft")
    info = json.loads((out / "pipeline.json").read_text())
    src = TextToMusic.from_pretrained(tmp_path / "src")
    assert info["codec_identity"] == shipped.codec.identity() != src.codec.identity()
    assert info["codec"] == "codec"  # the folder's own copy, never the path it came from
    x = torch.randn(1, 1, 4800)
    assert torch.equal(shipped.codec.encode(x), new.encode(x))
    assert torch.equal(shipped.codec.decode(new.encode(x)), new.decode(new.encode(x)))
    assert all(torch.equal(a, b) for a, b in zip(shipped.lm.state_dict().values(), src.lm.state_dict().values()))
    codes = src.codec.encode(x)
    assert not torch.equal(shipped.codec.decode(codes), src.codec.decode(codes))

    with pytest.raises(ConfigError, match="encoder_ft: does not give the codes"):
        export(tmp_path / "src", tmp_path / "dst2", codec=tmp_path / "encoder_ft")
    assert not (tmp_path / "dst2").exists()
