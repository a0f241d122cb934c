"""Sampling: greedy, top-k, top-p (nucleus), seeded determinism, classifier-free guidance."""

import math

import pytest
import torch

from codeclm.errors import CodecLMError
from codeclm.lm import apply_cfg, sample_next, top_k_filter, top_p_filter


def _logits(B=3, K=4, V=32, seed=0):
    return torch.randn(B, K, V, generator=torch.Generator().manual_seed(seed))


def test_greedy_is_argmax():
    logits = _logits()
    expected = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=0.0), expected)
    assert torch.equal(sample_next(logits, temperature=1.3, do_sample=False), expected)
    assert sample_next(logits, temperature=0.0).shape == (3, 4)
    assert sample_next(logits).dtype == torch.long


def test_top_k_never_picks_outside_the_top_k():
    logits = _logits(B=2, K=3, V=50, seed=1)
    allowed = logits.topk(5, dim=-1).indices  # [B, K, 5]
    gen = torch.Generator().manual_seed(0)
    many = logits.unsqueeze(0).expand(400, -1, -1, -1).reshape(800, 3, 50)  # 400 draws per row
    tokens = sample_next(many, temperature=2.0, top_k=5, generator=gen).view(400, 2, 3)
    hit = (tokens.unsqueeze(-1) == allowed.unsqueeze(0)).any(-1)
    assert bool(hit.all())
    assert len(torch.unique(tokens[:, 0, 0])) == 5  # hot temperature: every allowed token shows up


def test_top_k_filter_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    kept = torch.isfinite(top_k_filter(logits, 2)).sum().item()
    assert kept == 2
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_minimal_nucleus():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = probs.log().view(1, 1, 4)
    # p=0.7: 0.5 < 0.7, 0.5+0.25=0.75 >= 0.7 -> nucleus {1, 3}
    assert torch.isfinite(top_p_filter(logits, 0.7)).view(-1).tolist() == [False, True, False, True]
    # p=0.76: 0.75 < 0.76, so the third token (0.15) joins
    assert torch.isfinite(top_p_filter(logits, 0.76)).view(-1).tolist() == [False, True, True, True]
    # p=0.4: the top token alone has 0.5 >= 0.4
    assert torch.isfinite(top_p_filter(logits, 0.4)).view(-1).tolist() == [False, True, False, False]
    # kept logits are unchanged, disabled values are no-ops
    filtered = top_p_filter(logits, 0.7)
    assert torch.allclose(filtered[0, 0, [1, 3]], logits[0, 0, [1, 3]])
    assert torch.equal(top_p_filter(logits, 0.0), logits) and torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_sampling_stays_in_nucleus_and_is_vectorised():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.7, 0.1, 0.1, 0.1]])
    logits = probs.log().unsqueeze(0).expand(500, -1, -1)  # [500, K=2, 4]
    tokens = sample_next(logits, top_p=0.7, generator=torch.Generator().manual_seed(3))
    assert set(tokens[:, 0].tolist()) == {1, 3}
    assert set(tokens[:, 1].tolist()) == {0}


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.2, 0.5, 0.3])
    logits = probs.log().expand(20000, 1, 3)
    tokens = sample_next(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens.view(-1), minlength=3).float() / tokens.numel()
    assert torch.allclose(freq, probs, atol=0.02)


def test_seeded_determinism():
    logits = _logits(V=100)
    draw = lambda seed: sample_next(logits, temperature=1.5, top_k=20, top_p=0.9,
                                    generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(7), draw(7))
    assert not all(torch.equal(draw(7), draw(s)) for s in range(8, 12))


def test_cfg_hand_example():
    cond = torch.tensor([2.0, 0.0, -1.0])
    uncond = torch.tensor([1.0, 1.0, 1.0])
    assert torch.allclose(apply_cfg(cond, uncond, 3.0), torch.tensor([4.0, -2.0, -5.0]))
    assert torch.equal(apply_cfg(cond, uncond, 1.0), cond)
    assert torch.equal(apply_cfg(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("kwargs", [{"temperature": -0.1}, {"top_p": 1.5}, {"top_p": -0.1}, {"top_k": -1}])
def test_bad_sampling_parameters(kwargs):
    with pytest.raises(CodecLMError, match=next(iter(kwargs))):
        sample_next(_logits(), **kwargs)


def test_bad_cfg():
    with pytest.raises(CodecLMError, match="cfg scale"):
        apply_cfg(torch.zeros(3), torch.zeros(3), -1.0)
    with pytest.raises(CodecLMError):
        apply_cfg(torch.zeros(3), torch.zeros(4), 2.0)


def test_filtered_everything_but_one_is_deterministic():
    logits = _logits(V=10)
    tokens = sample_next(logits, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, logits.argmax(-1))
    assert math.isfinite(float(top_k_filter(logits, 1).max()))


def test_codebook_temperatures_scale_each_row_and_zero_is_greedy():
    from codeclm.lm.logits import CodebookTemperatureLogitsWarper, check_codebook_temperatures

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 3, 20, generator=g)
    out = CodebookTemperatureLogitsWarper([1.0, 0.5, 0.0])(None, scores)
    assert torch.equal(out[:, 0], scores[:, 0]) and torch.allclose(out[:, 1], scores[:, 1] * 2)
    # row 2 is greedy: only its argmax is left, whatever the sampler then does
    assert torch.equal(torch.isfinite(out[:, 2]), scores[:, 2] == scores[:, 2].amax(-1, keepdim=True))
    picks = torch.stack([sample_next(out, 1.0, 0, 0.0, True, torch.Generator().manual_seed(s)) for s in range(50)])
    assert (picks[:, :, 2] == scores[:, 2].argmax(-1)).all() and len(set(picks[:, 0, 0].tolist())) > 1
    # a colder row concentrates: its samples' entropy falls
    cold = CodebookTemperatureLogitsWarper([0.2, 1.0, 1.0])(None, scores)
    assert cold[:, 0].softmax(-1).max(-1).values.min() > scores[:, 0].softmax(-1).max(-1).values.min()
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0], [1.0, float("nan"), 1.0], "1,1,1", [True, 1.0, 1.0]):
        with pytest.raises(CodecLMError, match="codebook temperatures must be 3 numbers"):
            check_codebook_temperatures(bad, 3, "test")
