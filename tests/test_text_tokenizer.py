"""Caption tokenizer (sentencepiece) and the built-in text conditioner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeclm.data.synth_music import plan_piece
from codeclm.errors import ConfigError
from codeclm.lm.text_encoder import BuiltinTextConditioner
from codeclm.tokenizers import (
    PAD_ID,
    CaptionTokenizer,
    normalize_text,
    train_caption_tokenizer,
)


def captions(n: int = 50, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    caps = [plan_piece(rng).caption for _ in range(n)]
    if n > 1:
        caps[1] = "  A  Calm, PIANO piece!(slow)  "  # odd spacing and case
    return caps


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    with pytest.warns(UserWarning, match="cannot fill a vocabulary"):
        return train_caption_tokenizer(captions(), tmp_path_factory.mktemp("tok") / "spm", vocab_size=5000)


def test_normalize_text():
    assert normalize_text("  Hello ,World!  ( x )\tA\n") == "hello, world! (x) a"
    assert normalize_text("Ｆｕｌｌ ｗｉｄｔｈ") == "full width"  # NFKC
    assert normalize_text("Keep CASE", lowercase=False) == "Keep CASE"
    assert normalize_text("120 bpm, 3:4 time; 1,000 notes") == "120 bpm, 3:4 time; 1,000 notes"
    assert normalize_text("") == "" and normalize_text(" \n ") == ""
    for c in captions(10):
        assert normalize_text(normalize_text(c)) == normalize_text(c)


def test_round_trip_padding_and_empty(tok_path):
    tok = CaptionTokenizer(tok_path, max_len=64)
    caps = captions()
    ids, mask = tok.encode(caps + [""])
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    assert ids.shape[0] == len(caps) + 1 and int(mask.sum(1).max()) == ids.shape[1]
    assert (ids[~mask] == PAD_ID).all() and (ids[mask] != PAD_ID).all()
    lengths = mask.sum(1)
    assert bool((mask == (torch.arange(ids.shape[1]) < lengths[:, None])).all())  # left-aligned
    assert not mask[-1].any()  # the empty caption: all padding
    assert tok.decode(ids) == [normalize_text(c) for c in caps] + [""]
    assert tok.decode(ids, mask) == [normalize_text(c) for c in caps] + [""]
    ids, mask = tok.encode([""])
    assert ids.shape == (1, 1) and not mask.any()  # never zero-length


def test_max_len_truncates(tok_path):
    tok = CaptionTokenizer(tok_path, max_len=5)
    ids, mask = tok.encode(captions(4))
    assert ids.shape == (4, 5) and mask.all()


def test_training_is_deterministic(tmp_path, tok_path):
    with pytest.warns(UserWarning):
        again = train_caption_tokenizer(captions(), tmp_path / "again", vocab_size=5000)
    assert again.read_bytes() == tok_path.read_bytes()
    a, b = CaptionTokenizer(tok_path), CaptionTokenizer(again)
    assert torch.equal(a.encode(captions())[0], b.encode(captions())[0])


def test_bpe_and_errors(tmp_path):
    path = train_caption_tokenizer(captions(), tmp_path / "bpe", vocab_size=64, model_type="bpe")
    tok = CaptionTokenizer(path, max_len=256)
    assert tok.vocab_size == 64 and tok.decode(tok.encode(captions(5))[0]) == [normalize_text(c) for c in captions(5)]
    with pytest.raises(ConfigError, match="model_type"):
        train_caption_tokenizer(captions(), tmp_path / "x", model_type="word2")
    with pytest.raises(ConfigError, match="no non-empty text"):
        train_caption_tokenizer(["", "  "], tmp_path / "x")


def test_save_load(tmp_path, tok_path):
    tok = CaptionTokenizer(tok_path, max_len=7)
    back = CaptionTokenizer.load(tok.save(tmp_path / "t"))
    assert back.max_len == 7 and back.vocab_size == tok.vocab_size
    assert torch.equal(back.encode(captions())[0], tok.encode(captions())[0])
    with pytest.raises(ConfigError):
        CaptionTokenizer.load(tmp_path / "nowhere")


# -- the built-in conditioner ----------------------------------------------------------------------
def _conditioner(tok_path) -> BuiltinTextConditioner:
    torch.manual_seed(0)
    return BuiltinTextConditioner(CaptionTokenizer(tok_path), dim=32, num_layers=2, num_heads=4, max_len=32).eval()


def test_conditioner_shapes_mask_and_null(tok_path):
    cond = _conditioner(tok_path)
    tokens = cond.tokenize(["a calm piano piece", "", captions(3)[2]])
    emb, mask = cond(tokens)
    assert cond.output_dim == 32 and emb.dtype == torch.float32 and emb.shape == (3, mask.shape[1], 32)
    assert torch.equal(mask, tokens["attention_mask"]) and not mask[1].any()
    assert torch.isfinite(emb).all() and (emb[~mask] == 0).all()  # padding and the null condition are zeros
    emb, mask = cond(cond.tokenize(["", ""]))  # a whole batch of null conditions
    assert emb.shape == (2, 1, 32) and not mask.any() and (emb == 0).all()


def test_conditioner_padding_invariance(tok_path):
    cond = _conditioner(tok_path)
    short, long = "a calm piano piece", captions(1)[0] + " " + captions(3)[2]
    alone, m1 = cond(cond.tokenize([short]))
    batched, m2 = cond(cond.tokenize([short, long]))
    n = int(m1.sum())
    assert m2.shape[1] > n and torch.allclose(alone[0, :n], batched[0, :n], atol=1e-5)


def test_conditioner_save_load(tmp_path, tok_path):
    cond = _conditioner(tok_path)
    with torch.no_grad():
        for p in cond.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the initial weights
    folder = cond.save(tmp_path / "text")
    assert {p.name for p in folder.iterdir()} >= {"tokenizer.model", "tokenizer.json", "config.json",
                                                   "model.safetensors"}
    back = BuiltinTextConditioner.load(folder)
    texts = captions(4) + [""]
    with torch.no_grad():
        a, ma = cond(cond.tokenize(texts))
        b, mb = back(back.tokenize(texts))
    assert torch.equal(ma, mb) and torch.equal(a, b)
