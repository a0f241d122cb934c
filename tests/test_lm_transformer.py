"""TokenLM: config round trip, shapes, streaming (KV cache) == offline, preallocated in-place cache."""

import pytest
import torch

from codeclm.errors import CodecLMError, CodesError, ConfigError
from codeclm.lm import LMConfig, TokenLM
from codeclm.lm.patterns import DelayPattern
from codeclm.streaming import StreamingError

B, K, CARD, S, TC = 2, 3, 16, 9, 5


def tiny_config(**kw) -> LMConfig:
    base = {"n_q": K, "card": CARD, "dim": 32, "num_heads": 4, "num_layers": 2, "hidden_scale": 2.0, "max_seq_len": 32}
    base.update(kw)
    return LMConfig(**base)


def tiny_lm(**kw) -> TokenLM:
    torch.manual_seed(0)
    lm = TokenLM(tiny_config(**kw)).eval()
    for p in lm.parameters():  # larger weights than the 0.02 init: differences would show
        p.data.normal_(0, 0.3)
    return lm


def _inputs(cross: bool, cond_dim: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, CARD + 1, (B, K, S), generator=g)
    if not cross:
        return seq, None, None
    cond = torch.randn(B, TC, cond_dim, generator=g)
    mask = torch.ones(B, TC, dtype=torch.bool)
    mask[1, 3:] = False  # second item has 2 padded conditioning positions
    return seq, cond, mask


def test_config_round_trip_and_errors():
    cfg = tiny_config(positional="rope", cross_attention=True, cond_dim=24, delays=[0, 1, 2])
    d = cfg.to_dict()
    assert d["model_type"] == "codeclm-lm"
    assert LMConfig.from_dict(d) == cfg
    assert cfg.hidden_dim == 64 and cfg.special_token == CARD and cfg.head_dim == 8
    assert isinstance(cfg.get_pattern(), DelayPattern)
    with pytest.raises(ConfigError, match="unknown lm config keys"):
        LMConfig.from_dict({**d, "n_codebooks": 4})
    with pytest.raises(ConfigError, match="not a codeclm LM"):
        LMConfig.from_dict({**d, "model_type": "codeclm-codec"})
    for bad in [{"dim": 30, "num_heads": 4}, {"positional": "alibi"}, {"dropout": 1.0}, {"pattern": "zigzag"},
                {"delays": [0, 1]}, {"n_q": 0}]:
        with pytest.raises(ConfigError):
            tiny_config(**bad)


@pytest.mark.parametrize("norm_first", [True, False])
def test_offline_shapes_and_causality(norm_first):
    lm = tiny_lm(norm_first=norm_first)
    seq, _, _ = _inputs(False)
    logits = lm(seq)
    assert logits.shape == (B, K, S, CARD)
    changed = seq.clone()
    changed[:, :, 5:] = (changed[:, :, 5:] + 1) % CARD  # the future must not change the past
    assert torch.allclose(lm(changed)[:, :, :5], logits[:, :, :5], atol=1e-6)
    assert not torch.allclose(lm(changed)[:, :, 5:], logits[:, :, 5:])


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
@pytest.mark.parametrize("cross", [False, True])
def test_streaming_step_by_step_equals_offline(positional, cross):
    lm = tiny_lm(positional=positional, cross_attention=cross, cond_dim=24 if cross else None)
    seq, cond, mask = _inputs(cross)
    with torch.no_grad():
        offline = lm(seq, cond, mask)
        steps = []
        with lm.streaming(B):
            for s in range(S):
                # conditioning given on the first call only: its keys/values are cached
                steps.append(lm(seq[:, :, s:s + 1], cond if s == 0 else None, mask if s == 0 else None))
            assert lm.stream_offset == S
    torch.testing.assert_close(torch.cat(steps, dim=2), offline, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
def test_prompt_then_steps_then_chunk(positional):
    lm = tiny_lm(positional=positional, cross_attention=True)  # cond_dim == dim: no projection
    seq, cond, mask = _inputs(True, cond_dim=32)
    with torch.no_grad():
        offline = lm(seq, cond, mask)
        with lm.streaming(B):
            parts = [lm(seq[:, :, :4], cond, mask)]  # a prompt of 4 steps in one call
            parts += [lm(seq[:, :, s:s + 1], cond, mask) for s in (4, 5)]  # same cond object: reused
            parts.append(lm(seq[:, :, 6:]))  # several new steps after a prefix (offset-aligned mask)
            assert lm.stream_offset == S
            lm.reset_streaming()
            again = lm.step(seq[:, :, :3], cond, mask)  # a fresh stream after reset
    torch.testing.assert_close(torch.cat(parts, dim=2), offline, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, offline[:, :, 2], atol=1e-5, rtol=1e-5)


def test_kv_cache_is_preallocated_and_written_in_place():
    lm = tiny_lm()
    seq, _, _ = _inputs(False)
    with torch.no_grad(), lm.streaming(B):
        lm.step(seq[:, :, :1])
        caches = [layer.attn._streaming_state for layer in lm.layers]
        ptrs = [(c.k.data_ptr(), c.v.data_ptr()) for c in caches]
        assert caches[0].k.shape == (B, 4, 32, 8)  # [B, H, max_seq_len, head_dim]
        for s in range(1, S):
            lm.step(seq[:, :, s:s + 1])
            assert [(c.k.data_ptr(), c.v.data_ptr()) for c in caches] == ptrs
            assert all(c.offset == s + 1 for c in caches)
        assert torch.count_nonzero(caches[0].k[:, :, S:]) == 0  # untouched beyond the offset
    assert lm.layers[0].attn._streaming_state is None  # state dropped on exit


def test_fully_masked_condition_gives_finite_logits():
    lm = tiny_lm(cross_attention=True, cond_dim=24)
    seq, cond, mask = _inputs(True)
    mask[0] = False  # e.g. the CFG null condition
    out = lm(seq, torch.zeros_like(cond), mask)
    assert bool(torch.isfinite(out).all())


def test_padding_in_condition_is_ignored():
    lm = tiny_lm(cross_attention=True, cond_dim=24)
    seq, cond, mask = _inputs(True)
    noisy = cond.clone()
    noisy[1, 3:] = 100.0  # padded positions of item 1
    assert torch.allclose(lm(seq, cond, mask), lm(seq, noisy, mask), atol=1e-6)


def test_errors():
    lm = tiny_lm(max_seq_len=8)
    seq, _, _ = _inputs(False)
    with pytest.raises(CodesError):
        lm(seq[:, :2])
    with pytest.raises(CodesError):
        lm(seq.float())
    with pytest.raises(CodecLMError, match="no cross-attention"):
        lm(seq, torch.zeros(B, 2, 32))
    with pytest.raises(StreamingError):
        lm.step(seq[:, :, :1])
    with lm.streaming(B):
        with pytest.raises(StreamingError, match="max_seq_len"):
            lm(seq)  # 9 steps > 8
        with pytest.raises(StreamingError):
            lm(seq[:1, :, :1])  # wrong batch
    cross = tiny_lm(cross_attention=True, cond_dim=24)
    with pytest.raises(CodecLMError, match="pass cond"):
        cross(seq)
    with pytest.raises(CodecLMError, match="cond must be"):
        cross(seq, torch.zeros(B, 2, 7))


def test_training_mode_runs_with_dropout_and_backward():
    lm = TokenLM(tiny_config(dropout=0.1, cross_attention=True, cond_dim=24, positional="rope")).train()
    seq, cond, mask = _inputs(True)
    logits = lm(seq, cond, mask)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CARD), seq.clamp(max=CARD - 1).reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters())
