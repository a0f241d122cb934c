"""Codebook patterns: exact build/revert round trips, literal small layouts, step counts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codeclm.errors import CodecLMError, CodesError, ConfigError
from codeclm.lm import (
    DelayPattern,
    FlattenPattern,
    ParallelPattern,
    VallePattern,
    get_pattern,
)

NAMES = ["delay", "parallel", "flatten", "valle"]
SP = -1  # special token used in the literal layouts below


def _codes(B, K, T, seed=0):
    return torch.randint(0, 50, (B, K, T), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), K=st.integers(1, 5), T=st.integers(0, 9), B=st.integers(1, 3))
def test_build_revert_is_exact_inverse(name, K, T, B):
    pattern = get_pattern(name, K)
    codes = _codes(B, K, T, seed=K * 100 + T)
    seq, mask = pattern.build(codes, special_token=1000)
    S = pattern.num_steps(T)
    assert seq.shape == (B, K, S) and mask.shape == (K, S) and mask.dtype == torch.bool
    assert int(mask.sum()) == K * T  # every (k, t) placed exactly once
    assert bool((seq[:, ~mask] == 1000).all()) and bool((seq[:, mask] != 1000).all())
    assert pattern.frames_for_steps(S) == T
    back, present = pattern.revert(seq)
    assert torch.equal(back, codes) and bool(present.all())
    back2, _ = pattern.revert(seq, num_frames=T)
    assert torch.equal(back2, codes)


@pytest.mark.parametrize("name", NAMES)
def test_revert_carries_trailing_dims_like_logits(name):
    pattern = get_pattern(name, 3)
    emb = torch.randn(2, 3, 5, 7)
    seq, mask = pattern.build(emb, special_token=float("nan"))
    assert seq.shape == (2, 3, pattern.num_steps(5), 7)
    assert bool(seq[:, ~mask].isnan().all())
    back, _ = pattern.revert(seq)
    assert torch.equal(back, emb)


def test_delay_layout_literal():
    codes = torch.arange(12).view(1, 3, 4)  # codebook q of frame t = 4q + t
    seq, mask = DelayPattern(3).build(codes, SP)
    assert seq[0].tolist() == [
        [0, 1, 2, 3, SP, SP],
        [SP, 4, 5, 6, 7, SP],
        [SP, SP, 8, 9, 10, 11],
    ]
    assert mask.tolist() == (seq[0] != SP).tolist()


def test_custom_delays_and_parallel_literal():
    codes = torch.arange(6).view(1, 2, 3)
    seq, _ = DelayPattern(2, delays=[0, 2]).build(codes, SP)
    assert seq[0].tolist() == [[0, 1, 2, SP, SP], [SP, SP, 3, 4, 5]]
    seq, _ = ParallelPattern(2).build(codes, SP)
    assert torch.equal(seq, codes)


def test_flatten_layout_literal():
    codes = torch.arange(6).view(1, 2, 3)
    seq, _ = FlattenPattern(2).build(codes, SP)
    assert seq[0].tolist() == [[0, SP, 1, SP, 2, SP], [SP, 3, SP, 4, SP, 5]]
    assert FlattenPattern(2).layout(2) == [[(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)]]


def test_valle_layout_literal():
    codes = torch.arange(9).view(1, 3, 3)
    seq, _ = VallePattern(3).build(codes, SP)
    assert seq[0].tolist() == [
        [0, 1, 2, SP, SP, SP],
        [SP, SP, SP, 3, 4, 5],
        [SP, SP, SP, 6, 7, 8],
    ]
    assert VallePattern(3).layout(2) == [[(0, 0)], [(1, 0)], [(0, 1), (0, 2)], [(1, 1), (1, 2)]]
    seq, _ = VallePattern(3, delays=[0, 1]).build(codes, SP)
    assert seq[0].tolist() == [
        [0, 1, 2, SP, SP, SP, SP],
        [SP, SP, SP, 3, 4, 5, SP],
        [SP, SP, SP, SP, 6, 7, 8],
    ]


@pytest.mark.parametrize("K,T", [(1, 5), (4, 10), (8, 3)])
def test_step_counts(K, T):
    assert DelayPattern(K).num_steps(T) == T + K - 1
    assert DelayPattern(K).frames_for_steps(T + K - 1) == T
    assert DelayPattern(K).frames_for_steps(K - 1) == 0
    assert ParallelPattern(K).num_steps(T) == T
    assert FlattenPattern(K).num_steps(T) == K * T
    assert FlattenPattern(K).frames_for_steps(K * T + K - 1) == T
    assert VallePattern(K).num_steps(T) == (T if K == 1 else 2 * T)
    assert VallePattern(K).frames_for_steps(VallePattern(K).num_steps(T)) == T


def test_partial_sequence_reverts_with_mask():
    """A partly generated delay sequence: ask for all frames, the mask says which are present."""
    pattern = DelayPattern(3)
    codes = _codes(2, 3, 6)
    seq, _ = pattern.build(codes, 99)
    part = seq[:, :, :5]  # 5 steps: frames 0..2 complete, frame 3 has q=0,1, frame 4 has q=0
    complete, present = pattern.revert(part)
    assert complete.shape == (2, 3, 3) and torch.equal(complete, codes[:, :, :3])
    back, present = pattern.revert(part, num_frames=6, special_token=-7)
    assert present.sum(dim=0).tolist() == [3, 3, 3, 2, 1, 0]
    assert torch.equal(back[:, present], codes[:, present])
    assert bool((back[:, ~present] == -7).all())


def test_prefix_stability():
    """Prefix-stable patterns put frame t at the same steps whatever T is; VALL-E does not."""
    for name in ["delay", "parallel", "flatten"]:
        p = get_pattern(name, 3)
        assert p.prefix_stable
        assert torch.equal(p.indices(6)[1][:, :4], p.indices(4)[1])
    p = VallePattern(3)
    assert not p.prefix_stable
    assert not torch.equal(p.indices(6)[1][:, :4], p.indices(4)[1])


def test_index_tables_are_cached():
    p = DelayPattern(4)
    a = p.indices(10)
    assert p.indices(10)[0] is a[0]
    assert p.mask(10).shape == (4, 13)


def test_errors():
    with pytest.raises(ConfigError):
        get_pattern("zigzag", 4)
    with pytest.raises(ConfigError):
        DelayPattern(3, delays=[0, 1])
    with pytest.raises(ConfigError):
        DelayPattern(2, delays=[0, -1])
    with pytest.raises(ConfigError):
        get_pattern("flatten", 2, delays=[0, 1])
    with pytest.raises(CodesError):
        DelayPattern(3).build(torch.zeros(1, 2, 4, dtype=torch.long), 0)
    with pytest.raises(CodecLMError):
        DelayPattern(3).revert(torch.zeros(3, 4, dtype=torch.long))
    assert isinstance(get_pattern("delay", 2, delays=[1, 0]), DelayPattern)
