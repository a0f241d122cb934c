"""The conditioning provider (codeclm.lm.conditioning): named conditioners, the three fuse modes
(cross / sum / prepend) in the transformer input, classifier-free-guidance dropout shared by
training and generation, and a new condition added as one class plus one config entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm import LMConfig, TokenLM
from codeclm.lm.conditioning import (
    Condition,
    ConditionContext,
    ConditionDropout,
    Conditioner,
    ConditionFuser,
    ConditioningProvider,
    ConditionSpec,
    FusedCondition,
    step_frames,
)
from codeclm.lm.generate import _cfg_condition, generate_codes
from codeclm.lm.melody import MelodyConditioner

REPO = Path(__file__).resolve().parents[1]


# -- a new condition: this class + a config entry, nothing else ------------------------------------
class StyleConditioner(Conditioner):
    """A toy condition: one learned vector per style name (None / unknown: masked)."""

    kind = "style"

    def __init__(self, dim: int = 16, styles: list[str] | None = None) -> None:
        super().__init__()
        self.styles = list(styles or ["rock", "jazz"])
        self.output_dim = int(dim)
        self.emb = nn.Embedding(len(self.styles), dim)
        nn.init.normal_(self.emb.weight, std=1.0)

    def prepare(self, value, batch: int, context) -> torch.Tensor:
        values = [value] * batch if value is None or isinstance(value, str) else list(value)
        return torch.tensor([[self.styles.index(v) if v in self.styles else -1] for v in values])

    def forward(self, idx: torch.Tensor):
        mask = idx >= 0
        return self.emb(idx.clamp(min=0)) * mask[..., None], mask

    def config(self) -> dict:
        return {"dim": self.output_dim, "styles": self.styles}


STYLE = f"{__name__}:StyleConditioner"


def tiny_lm(cross: bool = True, seed: int = 0, **kw) -> TokenLM:
    torch.manual_seed(seed)
    cfg = dict(n_q=2, card=16, dim=16, num_heads=2, num_layers=2, cross_attention=cross, max_seq_len=128,
               pattern="delay")
    cfg.update(kw)
    lm = TokenLM(LMConfig(**cfg)).eval()
    for p in lm.parameters():  # a random LM that listens to its conditioning
        p.data.normal_(0, 0.3)
    return lm


def seq_of(lm: TokenLM, B: int, S: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.config.card + 1, (B, lm.config.n_q, S), generator=g)


@pytest.fixture(scope="module")
def text_cond(tmp_path_factory):
    from codeclm.lm.text_encoder import BuiltinTextConditioner
    from codeclm.tokenizers.text import CaptionTokenizer, train_caption_tokenizer

    model = train_caption_tokenizer(["calm piano", "fast drums", "sad strings"] * 20,
                                    tmp_path_factory.mktemp("tok") / "spm", vocab_size=30)
    torch.manual_seed(0)
    return BuiltinTextConditioner(CaptionTokenizer(model), dim=16, num_layers=1, num_heads=2).eval()


# -- the provider -----------------------------------------------------------------------------------
def test_provider_text_and_melody_cross_is_their_concatenation(text_cond):
    torch.manual_seed(0)
    melody = MelodyConditioner(dim=16).eval()
    provider = ConditioningProvider({"text": text_cond, "melody": melody},
                                    {"text": {"type": "builtin"}, "melody": {"type": "melody"}})
    chroma = torch.tensor([[0, 4, 7, 12, -1], [-1] * 5])
    conds = provider.encode({"text": ["calm piano", ""], "melody": chroma}, 2, ConditionContext(n_frames=5))
    emb, mask = text_cond.encode(["calm piano", ""])
    m, m_mask = melody(chroma)
    assert torch.equal(conds["text"].emb, emb) and torch.equal(conds["melody"].emb, m)
    fused = provider.fuse(conds)
    assert fused.prepend is None and fused.sum is None
    assert torch.equal(fused.cross, torch.cat([emb, m], 1)) and torch.equal(fused.cross_mask, torch.cat([mask, m_mask], 1))
    # the melody's prepare: no melody is one masked frame per row; per-row clips or indices
    assert torch.equal(melody.prepare(None, 2, ConditionContext(n_frames=5)), torch.full((2, 1), -1))
    rows = melody.prepare([torch.tensor([3, 4]), None], 2, ConditionContext(n_frames=4))
    assert torch.equal(rows, torch.tensor([[3, 4, -1, -1], [-1] * 4]))
    # a value for a condition the provider lacks is refused
    with pytest.raises(CodecLMError, match="no speaker conditioning"):
        provider.prepare({"speaker": ["x", "y"]}, 2)
    # the LM reads a FusedCondition's cross part as it reads the tensors
    lm = tiny_lm()
    seq = seq_of(lm, 2, 7)
    with torch.no_grad():
        assert torch.equal(lm(seq, fused), lm(seq, fused.cross, fused.cross_mask))
    with pytest.raises(CodecLMError, match="cross_mask"):
        lm(seq, fused, fused.cross_mask)


def test_specs_are_checked():
    with pytest.raises(ConfigError, match="fuse"):
        ConditionSpec("melody", fuse="concat")
    with pytest.raises(ConfigError, match="unknown keys"):
        ConditionSpec.from_dict({"type": "melody", "fusion": "sum"})
    with pytest.raises(ConfigError, match="unknown conditioner type"):
        ConditioningProvider.build({"x": {"type": "nope"}})
    lm = tiny_lm(cross=False)
    provider = ConditioningProvider.build({"style": {"type": STYLE, "fuse": "prepend", "options": {"dim": 8}}})
    with pytest.raises(ConfigError, match="width 8, the LM expects 16"):
        provider.check_lm(lm.config)
    cross = ConditioningProvider.build({"style": {"type": STYLE, "options": {"dim": 16}}})
    with pytest.raises(ConfigError, match="cross_attention=False"):
        cross.check_lm(lm.config)


# -- fuse modes ---------------------------------------------------------------------------------------
def test_fuse_prepend_shape_effect_streaming_and_static():
    lm = tiny_lm(cross=False)
    B, P, S = 2, 3, 9
    seq = seq_of(lm, B, S)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randn(B, P, 16, generator=g)
    fused = ConditionFuser({"style": "prepend"})({"style": Condition(prefix, torch.ones(B, P, dtype=torch.bool))})
    assert fused.prepend.shape == (B, P, 16) and fused.prepend_len == P
    with torch.no_grad():
        out = lm(seq, fused)
        plain = lm(seq)
        other = lm(seq, FusedCondition(prepend=prefix.flip(0)))
        # the prefix is the sequence's start: the same as feeding it as embeddings before the steps
        x = torch.cat([prefix, lm._embed(seq, None)], 1)
        x, _ = lm._add_positions(x, torch.arange(P + S))
        for layer in lm.layers:
            x = layer(x)
        manual = lm.logits(lm.out_norm(x)[:, P:])
    assert out.shape == plain.shape == (B, 2, S, 16)
    assert not torch.allclose(out, plain) and not torch.allclose(out[0], other[0])
    assert torch.allclose(out, manual, atol=1e-5)
    # streaming, one step per call after the first, equals offline
    with torch.no_grad(), lm.streaming(B):
        parts = [lm(seq[:, :, :2], fused)] + [lm(seq[:, :, s:s + 1]) for s in range(2, S)]
        assert lm.stream_offset == P + S
    assert torch.allclose(torch.cat(parts, 2), out, atol=1e-5)
    # masked prepend positions are zeros
    masked = ConditionFuser({"s": "prepend"})({"s": Condition(prefix, torch.tensor([[1, 0, 1], [0, 0, 0]]).bool())})
    assert torch.equal(masked.prepend[1], torch.zeros(P, 16)) and torch.equal(masked.prepend[0, 1], torch.zeros(16))
    # generation: the static-cache decoder gives the streaming one's tokens
    pattern = lm.config.get_pattern()
    a = generate_codes(lm, pattern, B, 6, fused, generator=torch.Generator().manual_seed(0))
    b = generate_codes(lm, pattern, B, 6, fused, generator=torch.Generator().manual_seed(0), static=True)
    assert torch.equal(a, b)
    with torch.no_grad(), lm.streaming(2 * B):  # guidance's 2B batch: the rows' own prefix, then the null
        both, _ = _cfg_condition(fused, None, None, None)
        first = lm.step(torch.full((2 * B, 2, 1), 16), both)
    assert torch.equal(both.prepend[B:], torch.zeros(B, P, 16)) and not torch.allclose(first[:B], first[B:])


def test_fuse_sum_is_aligned_with_the_delay_pattern():
    lm = tiny_lm(cross=False)
    pattern = lm.config.get_pattern()  # delays [0, 1]
    T, B = 6, 2
    assert step_frames(pattern, T).tolist() == [0, 1, 2, 3, 4, 5, 5]
    g = torch.Generator().manual_seed(0)
    per_frame = torch.randn(B, T, 16, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    fuser = ConditionFuser({"melody": "sum"})
    fused = fuser({"melody": Condition(per_frame, mask)}, pattern, T)
    S = pattern.num_steps(T)
    assert fused.sum.shape == (B, S, 16)
    assert torch.equal(fused.sum[0, :T], per_frame[0]) and torch.equal(fused.sum[0, T], per_frame[0, T - 1])
    assert torch.equal(fused.sum[1, 4:], torch.zeros(S - 4, 16))  # masked frames add nothing
    with pytest.raises(CodecLMError, match="pattern"):
        fuser({"melody": Condition(per_frame, mask)})
    # effect and causality: changing frame 3's state changes the logits from input step 3 on only
    seq = seq_of(lm, B, S)
    changed = per_frame.clone()
    changed[:, 3] += torch.randn(16, generator=g)  # (a constant shift would vanish in the LayerNorm)
    fused2 = fuser({"melody": Condition(changed, mask)}, pattern, T)
    with torch.no_grad():
        a, b = lm(seq, fused), lm(seq, fused2)
        assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.allclose(a[:, :, 3:], b[:, :, 3:])
        # the sum is added to the input embeddings
        x = lm._embed(seq, None) + fused.sum
        x, _ = lm._add_positions(x, torch.arange(S))
        for layer in lm.layers:
            x = layer(x)
        assert torch.allclose(a, lm.logits(lm.out_norm(x)), atol=1e-5)
        with lm.streaming(B):  # streaming slices the sum by the stream offset
            parts = [lm(seq[:, :, :1], fused)] + [lm(seq[:, :, s:s + 1]) for s in range(1, S)]
        assert torch.allclose(torch.cat(parts, 2), a, atol=1e-5)
    def gen(**kw):
        return generate_codes(lm, pattern, B, T, generator=torch.Generator().manual_seed(0), **kw)

    assert torch.equal(gen(cond=fused), gen(cond=fused, static=True))
    assert not torch.equal(gen(cond=fused), gen())


def test_fuse_cross_order_and_effect(text_cond):
    style = StyleConditioner(dim=16)
    fuser = ConditionFuser({"text": "cross", "style": "cross"})
    text = Condition(*text_cond.encode(["calm piano", "fast drums"]))
    st = Condition(*style(style.prepare(["rock", None], 2, None)))
    fused = fuser({"text": text, "style": st})
    assert fused.cross.shape == (2, text.emb.shape[1] + 1, 16)
    assert torch.equal(fused.cross[:, -1:], st.emb) and fused.cross_mask[:, -1].tolist() == [True, False]
    lm = tiny_lm()
    seq = seq_of(lm, 2, 5)
    with torch.no_grad():
        with_style = lm(seq, fused)
        without = lm(seq, fuser.__class__({"text": "cross"})({"text": text}))
    assert not torch.allclose(with_style[0], without[0])  # row 0 has a style
    assert torch.allclose(with_style[1], without[1], atol=1e-6)  # row 1's is masked: ignored


# -- classifier-free guidance --------------------------------------------------------------------------
def test_cfg_dropout_is_seeded_and_its_null_is_generations():
    drop = ConditionDropout(0.3, {"text": None, "melody": 0.5})
    a = drop.draw(["text", "melody"], 64, torch.Generator().manual_seed(7))
    b = drop.draw(["text", "melody"], 64, torch.Generator().manual_seed(7))
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(7)  # the draws: one for CFG, one per condition with a dropout
    everything = torch.rand(64, generator=g) < 0.3
    assert torch.equal(a["*"], everything) and torch.equal(a["text"], everything)
    assert torch.equal(a["melody"], everything | (torch.rand(64, generator=g) < 0.5))
    assert 0 < int(a["*"].sum()) < int(a["melody"].sum()) < 64
    assert not ConditionDropout(0.0).draw(["text"], 8)["text"].any()
    assert ConditionDropout(1.0).draw(["text"], 8)["text"].all()

    # a dropped training row is exactly generation's null row
    g = torch.Generator().manual_seed(0)
    conds = {"text": Condition(torch.randn(2, 4, 8, generator=g), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()),
             "melody": Condition(torch.randn(2, 3, 8, generator=g), torch.ones(2, 3, dtype=torch.bool))}
    rows = torch.tensor([False, True])
    applied = drop.apply(conds, {"text": rows, "melody": rows})
    null = drop.nullify(conds)
    for name in conds:
        assert torch.equal(applied[name].emb[1], null[name].emb[1]) and not applied[name].mask[1].any()
        assert torch.equal(applied[name].emb[0], conds[name].emb[0])
        assert torch.equal(applied[name].mask[0], conds[name].mask[0])
    # apply keeps gradients for the kept rows
    emb = conds["text"].emb.clone().requires_grad_()
    drop.apply({"text": Condition(emb, conds["text"].mask)}, {"text": rows})["text"].emb.sum().backward()
    assert emb.grad[0].eq(1).all() and emb.grad[1].eq(0).all()
    # the fused null equals what iter_codes builds by default for guidance
    fuser = ConditionFuser({"text": "cross", "melody": "cross"})
    fused, fused_null = fuser(conds), fuser(null)
    both_default, _ = _cfg_condition(fused, None, None, None)
    both_given, _ = _cfg_condition(fused, None, fused_null, None)
    assert torch.equal(both_default.cross, both_given.cross)
    assert torch.equal(both_default.cross_mask, both_given.cross_mask)
    assert torch.equal(both_default.cross[2:], torch.zeros_like(fused.cross)) and not both_default.cross_mask[2:].any()


def test_training_and_generation_share_the_dropout(tmp_path):
    """The lm task's provider is the one class pipelines use; with cond_dropout 1 every training
    row sees exactly the generation null."""
    from codeclm.training.config import load_recipe
    from codeclm.training.lm_task import Task
    from test_lm_training import TINY, make_cache
    from accelerate import Accelerator

    cache = make_cache(tmp_path / "cache", n=8)
    cfg = load_recipe(TINY, [f"data.token_cache={cache}", f"out_dir={tmp_path / 'run'}", "lm.cond_dropout=1.0"])
    task = Task(cfg, Accelerator(cpu=True))
    assert isinstance(task.provider.dropout, ConditionDropout) and task.provider.names == ["text"]
    batch = task.collate([task.train_set[i] for i in range(3)])
    drops = task.provider.dropout.draw(task.provider.names, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = task._condition(task.models, batch["conditions"], batch["codes"].shape[2], drops)
        conds = task.provider(batch["conditions"])
        null = task.provider.fuse(task.provider.dropout.nullify(conds))
    assert torch.equal(trained.cross, null.cross) and torch.equal(trained.cross_mask, null.cross_mask)


# -- a new condition end to end: one class + one config entry --------------------------------------------
def _style_cache(tmp_path: Path) -> Path:
    from test_lm_training import make_cache

    cache = make_cache(tmp_path / "cache", n=16)
    index = cache / "index.jsonl"
    lines = [json.loads(x) for x in index.read_text().splitlines()]
    for i, e in enumerate(lines):
        e["style"] = ["rock", "jazz", None][i % 3]
    index.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return cache


def test_new_condition_trains_exports_and_generates(tmp_path):
    from codeclm.codec import Codec
    from codeclm.pipelines import TextToMusic
    from codeclm.pipelines.base import load_lm
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train
    from conftest import tiny_codec_config
    from test_lm_training import TINY

    cache, out = _style_cache(tmp_path), tmp_path / "run"
    entry = [f"lm.conditions.style.type={STYLE}", "lm.conditions.style.fuse=prepend",
             "lm.conditions.style.options.dim=32", "lm.conditions.style.options.styles=[rock,jazz]",
             "lm.conditions.style.dropout=0.2"]
    train(load_recipe(TINY, [f"data.token_cache={cache}", f"out_dir={out}", "max_steps=3", "ckpt_every=0",
                             "valid_every=3", "log_every=1", *entry]))
    folder = out / "model"
    info = json.loads((folder / "pipeline.json").read_text())
    assert info["conditions"] == {"text": {"type": "builtin", "fuse": "cross"},
                                  "style": {"type": STYLE, "fuse": "prepend"}}
    assert (folder / "style" / "model.safetensors").is_file()

    provider = ConditioningProvider.load(folder, info["conditions"])
    assert isinstance(provider.get("style"), StyleConditioner) and provider.get("style").styles == ["rock", "jazz"]
    torch.manual_seed(0)
    pipe = TextToMusic(load_lm(folder / "lm"), Codec(tiny_codec_config(bins=16)).eval(), provider=provider)
    kw = dict(duration=0.05, seed=0)
    rock = pipe.generate(["calm piano"], conditions={"style": ["rock"]}, **kw)[0]
    assert torch.equal(rock, pipe.generate(["calm piano"], conditions={"style": ["rock"]}, **kw)[0])
    n = pipe._n_frames(0.05)
    seq = torch.full((1, 2, 4), 16)
    with torch.no_grad():  # the style reaches the LM: as prepended tokens of its own
        fused = {s: pipe._condition(["calm piano"], n, {"style": [s]})[0] for s in ("rock", "jazz")}
        assert fused["rock"].prepend.shape == (1, 1, 32) and fused["rock"].cross.shape[-1] == 32
        assert not torch.allclose(pipe.lm(seq, fused["rock"]), pipe.lm(seq, fused["jazz"]))
    with pytest.raises(CodecLMError, match="no speaker conditioning"):
        pipe.generate(["calm piano"], conditions={"speaker": ["x"]}, **kw)
    # save_pretrained / from_pretrained keep the condition (pipeline.json's conditions)
    pipe.save_pretrained(tmp_path / "saved")
    again = TextToMusic.from_pretrained(tmp_path / "saved")
    assert again.provider.specs["style"].fuse == "prepend"
    assert torch.equal(again.generate(["calm piano"], conditions={"style": ["rock"]}, **kw)[0], rock)


def test_melody_summed_per_frame_trains_and_follows_the_melody(tmp_path):
    from codeclm.codec import Codec
    from codeclm.pipelines import TextToMusic
    from codeclm.pipelines.base import load_lm
    from codeclm.training.config import load_recipe
    from codeclm.training.trainer import train
    from conftest import tiny_codec_config
    from test_lm_training import TINY, make_chroma_cache

    cache = make_chroma_cache(tmp_path / "cache", n=12)
    out = tmp_path / "run"
    train(load_recipe(TINY, [f"data.token_cache={cache}", f"out_dir={out}", "max_steps=3", "lm.melody=true",
                             "lm.conditions.melody.fuse=sum", "ckpt_every=0", "valid_every=3", "log_every=1"]))
    folder = out / "model"
    info = json.loads((folder / "pipeline.json").read_text())
    assert info["conditions"]["melody"] == {"type": "melody", "fuse": "sum"}
    provider = ConditioningProvider.load(folder, info["conditions"])
    assert provider.get("melody").output_dim == 32  # the LM's width (model.dim), not the text's
    pipe = TextToMusic(load_lm(folder / "lm"), Codec(tiny_codec_config(bins=16)).eval(), provider=provider)
    assert pipe.has_melody
    n = pipe._n_frames(0.05)
    tune = torch.tensor([[0, 4, 7, 11] * 100])[:, :n]
    a = pipe._generate_codes(["calm piano"], n, 0, 3.0, 1.0, 250, 0.0, False, melody=tune)
    b = pipe._generate_codes(["calm piano"], n, 0, 3.0, 1.0, 250, 0.0, False)
    assert a.shape == b.shape == (1, 2, n) and not torch.equal(a, b)


def test_no_import_cycle_between_conditioners_and_text_encoder():
    code = ("import sys; import codeclm.lm.conditioners; "
            "assert 'codeclm.lm.text_encoder' not in sys.modules, 'conditioners imports text_encoder'; "
            "from codeclm.lm.conditioning import conditioner_class; "
            "assert conditioner_class('builtin').__module__ == 'codeclm.lm.text_encoder'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
