"""Caption attributes (codeclm.lm.attributes): what the parser reads from a caption, the prepended
tokens it becomes, its files, and the condition trained, exported and generated from through the
music pipeline, with the caption alone as its value (source: text); the caption's key as a
per-frame condition (caption_key), added to an export by a fine-tune (lm.init_fresh)."""

from __future__ import annotations

import json

import pytest
import torch

from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.attributes import (SLOTS, CaptionAttributeConditioner, CaptionAttributes,
                                   CaptionInstrumentConditioner, CaptionKeyConditioner, key_features, parse_caption)
from codeclm.lm.conditioning import ConditioningProvider, conditioner_class


@pytest.mark.parametrize("caption, expected", [
    ("calm jazz track in D minor at 92 bpm with piano, upright bass and drums",
     CaptionAttributes(92.0, 2, "minor", "jazz", "calm", ("piano", "upright bass", "drums"))),
    # "warm pad" is an instrument, so "warm" is not the mood; "electric piano" is not also "piano"
    ("moody ambient track in Bb major at 70 bpm with warm pad, electric piano and synth bass",
     CaptionAttributes(70.0, 10, "major", "ambient", "moody", ("warm pad", "electric piano", "synth bass"))),
    ("Techno in F# minor, 128 BPM", CaptionAttributes(128.0, 6, "minor", None, None, ())),
    ("a song in e-flat major at 99.5 beats per minute", CaptionAttributes(99.5, 3, "major", None, None, ())),
    ("something minor and slow", CaptionAttributes(None, None, "minor", None, None, ())),
    ("calm piano", CaptionAttributes(None, None, None, None, "calm", ("piano",))),
    ("", CaptionAttributes()),
])
def test_parse_caption(caption, expected):
    assert parse_caption(caption) == expected


def test_parse_reads_every_caption_of_the_synthetic_corpus():
    from codeclm.data.synth_music import GM_NAMES, _NOTE_NAMES, STYLES, plan_piece
    import numpy as np

    rng = np.random.default_rng(123)
    for _ in range(200):
        piece = plan_piece(rng)
        a = parse_caption(piece.caption)
        assert (a.bpm, a.tonic, a.mode, a.style, a.mood) == (piece.bpm, piece.tonic, piece.mode, piece.style,
                                                             piece.mood), piece.caption
        names = {GM_NAMES[p] for p in (piece.lead, piece.chords, piece.bass)}
        assert set(a.instruments) == names | ({"drums"} if STYLES[piece.style]["drums"] else set())
        assert _NOTE_NAMES[a.tonic] in piece.caption


def test_tokens_masks_and_tempo_neighbourhood():
    torch.manual_seed(0)
    cond = CaptionAttributeConditioner(dim=8, tempo_range=(40, 220), tempo_step=5)
    assert conditioner_class("caption_attributes") is CaptionAttributeConditioner
    prepared = cond.prepare(["calm piano", "rock at 121 bpm in A minor", None, "folk at 400 bpm"], 4, None)
    assert prepared["tempo"].tolist() == [-1, round((121 - 40) / 5), -1, cond.n_tempo - 1]  # clipped to the range
    emb, mask = cond(prepared)
    assert emb.shape == (4, len(SLOTS), 8) and mask.dtype == torch.bool
    assert mask.tolist() == [[False, False, False, False, True, True],
                             [True, True, True, True, False, False],
                             [False] * 6,
                             [True, False, False, True, False, False]]
    assert torch.all(emb[~mask] == 0) and torch.all(emb[mask].abs().sum(-1) > 0)
    # two instruments: the mean of their rows (plus the slot's vector)
    two = cond(cond.prepare("piano and cello", 1, None))[0][0, SLOTS.index("instruments")]
    rows = cond.instrument.weight[[cond.instruments.index("piano"), cond.instruments.index("cello")]]
    assert torch.allclose(two, rows.mean(0) + cond.slot[SLOTS.index("instruments")])
    with pytest.raises(CodecLMError, match="3 captions for a batch of 2"):
        cond.prepare(["a", "b", "c"], 2, None)
    with pytest.raises(ConfigError, match="tempo_range"):
        CaptionAttributeConditioner(tempo_range=(100, 50))
    with pytest.raises(ConfigError, match="styles must be distinct"):
        CaptionAttributeConditioner(styles=["pop", "pop"])


def test_save_and_load_keep_weights_and_vocabulary(tmp_path):
    torch.manual_seed(1)
    cond = CaptionAttributeConditioner(dim=8, styles=["pop", "chiptune"], moods=["sad"], instruments=["kazoo"])
    cond.save_folder(tmp_path / "attr")
    config = json.loads((tmp_path / "attr" / "config.json").read_text())
    assert config["model_type"] == "codeclm-condition-caption_attributes" and config["styles"] == ["pop", "chiptune"]
    again = CaptionAttributeConditioner.load(tmp_path / "attr")
    caption = ["sad chiptune at 150 bpm with kazoo in G major"]
    assert again.parse(caption[0]) == CaptionAttributes(150.0, 7, "major", "chiptune", "sad", ("kazoo",))
    a, b = cond(cond.prepare(caption, 1, None)), again(again.prepare(caption, 1, None))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and bool(a[1].all())


def exported_pipeline(folder, name: str, spec: dict):
    """A tiny run's export as a TextToMusic (a tiny random codec), after checking that its
    pipeline.json names condition ``name`` as ``spec``."""
    from codeclm.codec import Codec
    from codeclm.pipelines import TextToMusic
    from codeclm.pipelines.base import load_lm
    from conftest import tiny_codec_config

    info = json.loads((folder / "pipeline.json").read_text())
    assert info["conditions"][name] == spec
    provider = ConditioningProvider.load(folder, info["conditions"])
    torch.manual_seed(0)
    return TextToMusic(load_lm(folder / "lm"), Codec(tiny_codec_config(bins=16)).eval(), provider=provider)


def test_trains_exports_and_the_caption_reaches_the_lm(tmp_path):
    """The recipe's entry (fuse prepend, source text) trains from the cache's captions, is exported
    with the model, and at generation reads the prompt itself: prompts differing only in tempo give
    different prepended tokens and different logits."""
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train
    from test_lm_training import TINY, make_cache

    cache, out = make_cache(tmp_path / "cache", n=12), tmp_path / "run"
    index = cache / "index.jsonl"
    lines = [json.loads(x) for x in index.read_text().splitlines()]
    for i, e in enumerate(lines):
        e["caption"] = f"calm jazz track in C major at {80 + 10 * i} bpm with piano"
    index.write_text("".join(json.dumps(e) + "\n" for e in lines))
    entry = ["lm.conditions.attributes.type=caption_attributes", "lm.conditions.attributes.fuse=prepend",
             "lm.conditions.attributes.source=text", "lm.conditions.attributes.options.dim=32"]
    train(load_recipe(TINY, [f"data.token_cache={cache}", f"out_dir={out}", "max_steps=3", "ckpt_every=0",
                             "valid_every=3", "log_every=1", *entry]))
    pipe = exported_pipeline(out / "model", "attributes", {"type": "caption_attributes", "fuse": "prepend",
                                                          "source": "text"})
    n = pipe._n_frames(0.05)
    seq = torch.full((1, 2, 4), 16)
    with torch.no_grad():
        slow, _ = pipe._condition(["calm jazz track at 80 bpm"], n)
        fast, _ = pipe._condition(["calm jazz track at 140 bpm"], n)
        assert slow.prepend.shape == (1, len(SLOTS), 32)
        assert not torch.allclose(slow.prepend, fast.prepend)
        assert not torch.allclose(pipe.lm(seq, slow), pipe.lm(seq, fast))
    kw = dict(duration=0.05, seed=0)
    first = pipe.generate(["calm jazz track at 80 bpm"], **kw)[0]
    assert torch.equal(first, pipe.generate(["calm jazz track at 80 bpm"], **kw)[0])
    # the six prepended tokens take context: one window holds six steps fewer (long-form included)
    from codeclm.pipelines.longform import context_frames, generate_long

    assert pipe.max_steps == pipe.lm.config.max_seq_len - len(SLOTS)
    most = context_frames(pipe)
    assert pipe.pattern.num_steps(most) <= pipe.max_steps < pipe.pattern.num_steps(most + 1)
    assert pipe._n_frames(most / pipe.frame_rate) == most
    with pytest.raises(CodecLMError, match="at most"):
        pipe._n_frames((most + 1) / pipe.frame_rate)
    long = generate_long(pipe, "calm jazz track at 80 bpm", 1.5 * most / pipe.frame_rate, seed=0)
    assert long.shape[-1] == round(1.5 * most / pipe.frame_rate * pipe.sample_rate)


def test_key_features_are_the_scale_triad_tonic_and_mode():
    a_minor = key_features(parse_caption("dark folk in A minor"))
    assert a_minor.nonzero().flatten().tolist() == sorted(
        [9, 11, 0, 2, 4, 5, 7] + [12 + 9, 12 + 0, 12 + 4] + [24 + 9] + [37])
    eb_major = key_features(parse_caption("in Eb major"))
    assert eb_major[:12].nonzero().flatten().tolist() == [0, 2, 3, 5, 7, 8, 10]  # Eb F G Ab Bb C D
    assert eb_major[12:24].nonzero().flatten().tolist() == [3, 7, 10] and eb_major[36] == 1
    bare = key_features(parse_caption("something minor and slow"))
    assert bare.nonzero().flatten().tolist() == [37]  # the mode alone
    assert key_features(parse_caption("calm piano")) is None


def test_key_condition_is_one_state_per_frame_and_starts_at_zero(tmp_path):
    from codeclm.lm.conditioning import ConditionContext

    cond = CaptionKeyConditioner(dim=8)
    assert conditioner_class("caption_key") is CaptionKeyConditioner
    captions = ["rock in A minor", "calm piano", "pop in C major"]
    prepared = cond.prepare(captions, 3, ConditionContext(n_frames=5))
    emb, mask = cond(prepared)
    assert emb.shape == (3, 5, 8) and mask.tolist() == [[True] * 5, [False] * 5, [True] * 5]
    assert torch.all(emb == 0)  # a fine-tune that adds it starts as the model without it
    torch.manual_seed(0)
    torch.nn.init.normal_(cond.proj.weight)
    emb, _ = cond(prepared)
    assert torch.equal(emb[:, :1].expand(-1, 5, -1), emb) and torch.all(emb[1] == 0)
    assert not torch.allclose(emb[0], emb[2])
    cond.save_folder(tmp_path / "key")
    again = CaptionKeyConditioner.load(tmp_path / "key")
    assert torch.equal(again(prepared)[0], emb)
    with pytest.raises(CodecLMError, match="2 captions for a batch of 3"):
        cond.prepare(captions[:2], 3, None)


def test_instrument_condition_is_the_mean_of_the_named_instruments_at_every_frame(tmp_path):
    from codeclm.lm.conditioning import ConditionContext

    cond = CaptionInstrumentConditioner(dim=8, instruments=["piano", "electric piano", "drums", "kazoo"])
    assert conditioner_class("caption_instruments") is CaptionInstrumentConditioner
    prepared = cond.prepare(["jazz with electric piano and drums", "calm", "kazoo"], 3, ConditionContext(n_frames=4))
    assert prepared["features"].tolist() == [[0, 0.5, 0.5, 0], [0, 0, 0, 0], [0, 0, 0, 1]]  # not also "piano"
    emb, mask = cond(prepared)
    assert emb.shape == (3, 4, 8) and mask[:, 0].tolist() == [True, False, True] and torch.all(emb == 0)
    torch.manual_seed(0)
    torch.nn.init.normal_(cond.proj.weight)
    emb, _ = cond(prepared)
    assert torch.allclose(emb[0, 2], 0.5 * (cond.proj.weight[:, 1] + cond.proj.weight[:, 2]) + cond.proj.bias)
    cond.save_folder(tmp_path / "inst")
    again = CaptionInstrumentConditioner.load(tmp_path / "inst")
    assert again.instruments == cond.instruments and torch.equal(again(prepared)[0], emb)
    with pytest.raises(ConfigError, match="distinct"):
        CaptionInstrumentConditioner(instruments=["piano", "piano"])


def test_a_fine_tune_adds_the_key_condition_to_an_export(tmp_path):
    """lm.init_fresh: a run from an export (init_from) that adds a condition loads every exported
    part strictly and starts the new one as initialised; the export carries it (fuse sum), and at
    generation the prompt's key reaches the LM through it."""
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train
    from test_lm_training import TINY, make_cache

    cache = make_cache(tmp_path / "cache", n=12)
    index = cache / "index.jsonl"
    lines = [json.loads(x) for x in index.read_text().splitlines()]
    for i, e in enumerate(lines):
        e["caption"] = f"calm jazz track in {'CDEFGAB'[i % 7]} {('major', 'minor')[i % 2]} with piano"
    index.write_text("".join(json.dumps(e) + "\n" for e in lines))
    common = [f"data.token_cache={cache}", "ckpt_every=0", "valid_every=0", "log_every=1"]
    train(load_recipe(TINY, [*common, f"out_dir={tmp_path / 'base'}", "max_steps=2"]))
    key = ["lm.conditions.key.type=caption_key", "lm.conditions.key.fuse=sum", "lm.conditions.key.source=text",
           "lm.conditions.key.options.dim=32", f"init_from={tmp_path / 'base' / 'model'}", "optim.lr=0.01"]
    with pytest.raises(ConfigError, match="missing key/"):
        train(load_recipe(TINY, [*common, f"out_dir={tmp_path / 'strict'}", "max_steps=1", *key]))
    with pytest.raises(ConfigError, match="init_fresh: 'style' is not one of"):
        load_recipe(TINY, [*common, f"out_dir={tmp_path / 'bad'}", *key, "lm.init_fresh=[style]"])
    out = tmp_path / "run"
    train(load_recipe(TINY, [*common, f"out_dir={out}", "max_steps=3", *key, "lm.init_fresh=[key]"]))
    pipe = exported_pipeline(out / "model", "key", {"type": "caption_key", "fuse": "sum", "source": "text"})
    assert pipe.provider.get("key").proj.weight.abs().sum() > 0  # trained away from its zero start
    n = pipe._n_frames(0.1)
    seq = torch.full((1, 2, 6), 16)
    with torch.no_grad():
        c_major, _ = pipe._condition(["calm jazz track in C major"], n)
        f_minor, _ = pipe._condition(["calm jazz track in F# minor"], n)
        assert c_major.sum.shape[0] == 1 and c_major.sum.shape[-1] == 32
        assert not torch.allclose(c_major.sum, f_minor.sum)
        assert not torch.allclose(pipe.lm(seq, c_major), pipe.lm(seq, f_minor))
