"""generate_codes: the KV-cached step loop over any pattern, prompts, CFG, frame callbacks."""

import pytest
import torch

from codeclm.errors import CodecLMError, CodesError
from codeclm.lm import LMConfig, TokenLM, get_pattern
from codeclm.lm.generate import generate_codes, iter_codes


def _lm(cross=False, n_q=3, card=16, max_seq_len=128):
    torch.manual_seed(0)
    cfg = LMConfig(n_q=n_q, card=card, dim=32, num_heads=2, num_layers=2, max_seq_len=max_seq_len,
                   cross_attention=cross, cond_dim=24 if cross else None)
    lm = TokenLM(cfg).eval()
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return lm


def _offline_greedy(lm, pattern, B, T, cond=None, mask=None):
    """Reference: recompute the whole sequence at every step (no cache), greedy."""
    K, card = lm.config.n_q, lm.config.card
    frame = pattern.indices(T)[0]
    S = frame.shape[1]
    seq = torch.full((B, K, S + 1), card, dtype=torch.long)  # column 0: start step
    with torch.no_grad():
        for s in range(S):
            logits = lm(seq[:, :, : s + 1], cond, mask)[:, :, -1]
            seq[:, :, s + 1] = torch.where(frame[:, s] >= 0, logits.argmax(-1), card)
    return pattern.revert(seq[:, :, 1:], T)[0]


@pytest.mark.parametrize("name", ["delay", "parallel", "flatten", "valle"])
def test_greedy_matches_uncached_reference(name):
    lm = _lm()
    pattern = get_pattern(name, 3)
    codes = generate_codes(lm, pattern, 2, 5, do_sample=False)
    assert codes.shape == (2, 3, 5) and codes.dtype == torch.long
    assert int(codes.max()) < 16 and int(codes.min()) >= 0
    assert torch.equal(codes, _offline_greedy(lm, pattern, 2, 5))


def test_cross_attention_and_cfg():
    lm = _lm(cross=True)
    pattern = get_pattern("delay", 3)
    cond = torch.randn(2, 4, 24)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    plain = generate_codes(lm, pattern, 2, 6, cond, mask, do_sample=False)
    assert torch.equal(plain, _offline_greedy(lm, pattern, 2, 6, cond, mask))
    # scale 1: no guidance; scale 0: the null condition alone
    assert torch.equal(generate_codes(lm, pattern, 2, 6, cond, mask, guidance_scale=1.0, do_sample=False), plain)
    null = generate_codes(lm, pattern, 2, 6, cond, mask, guidance_scale=0.0, do_sample=False)
    zero_mask = torch.zeros(2, 4, dtype=torch.bool)
    assert torch.equal(null, _offline_greedy(lm, pattern, 2, 6, torch.zeros_like(cond), zero_mask))
    guided = generate_codes(lm, pattern, 2, 6, cond, mask, guidance_scale=3.0, do_sample=False)
    assert guided.shape == plain.shape
    # a null condition of another length is padded
    other = generate_codes(lm, pattern, 2, 6, cond, mask, null_cond=torch.zeros(2, 1, 24),
                           null_mask=torch.zeros(2, 1, dtype=torch.bool), guidance_scale=3.0, do_sample=False)
    assert torch.equal(other, guided)


def test_sampling_is_seeded():
    lm = _lm()
    pattern = get_pattern("delay", 3)

    def run(seed):
        return generate_codes(lm, pattern, 2, 8, temperature=1.0, top_k=5,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("name", ["delay", "flatten", "valle"])
def test_prompt_continuation_and_frame_callback(name):
    lm = _lm()
    pattern = get_pattern(name, 3)
    full = generate_codes(lm, pattern, 2, 7, do_sample=False)
    prompt = torch.randint(0, 16, (2, 3, 3))
    chunks = []
    cont = generate_codes(lm, pattern, 2, 7, do_sample=False, prompt_codes=prompt, on_frames=chunks.append)
    assert torch.equal(cont[:, :, :3], prompt)
    assert torch.equal(torch.cat(chunks, 2), cont)
    if pattern.prefix_stable:
        assert len(chunks) > 2  # frames come out as they complete
        assert torch.equal(generate_codes(lm, pattern, 2, 7, do_sample=False, prompt_codes=full[:, :, :4]), full)
    whole = generate_codes(lm, pattern, 2, 3, prompt_codes=prompt)  # nothing left to sample
    assert torch.equal(whole, prompt)


def test_iterator_yields_frames_in_order():
    lm = _lm()
    pattern = get_pattern("delay", 3)
    chunks = list(iter_codes(lm, pattern, 1, 6, do_sample=False))
    assert [c.shape[2] for c in chunks] == [1] * 6
    assert not lm.is_streaming
    it = iter_codes(lm, pattern, 1, 6, do_sample=False)
    next(it)
    assert lm.is_streaming
    it.close()  # abandoning the iterator closes the stream
    assert not lm.is_streaming


def test_errors():
    lm = _lm(max_seq_len=8)
    pattern = get_pattern("delay", 3)
    with pytest.raises(CodecLMError, match="max_seq_len"):
        generate_codes(lm, pattern, 1, 7)
    with pytest.raises(CodecLMError, match="codebooks"):
        generate_codes(lm, get_pattern("delay", 2), 1, 2)
    with pytest.raises(CodesError):
        generate_codes(lm, pattern, 1, 3, prompt_codes=torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(CodesError):
        generate_codes(lm, pattern, 1, 3, prompt_codes=torch.full((1, 3, 2), 16))
    with pytest.raises(CodecLMError):
        generate_codes(lm, pattern, 1, 3, guidance_scale=-1.0)
    with pytest.raises(CodecLMError, match="condition"):
        generate_codes(lm, pattern, 1, 3, guidance_scale=2.0)


def test_step_cost_does_not_grow_with_k(monkeypatch):
    """One LM call per step whatever K (vectorised over codebooks)."""
    for n_q in (2, 8):
        lm = _lm(n_q=n_q)
        calls = []

        def counted(*a, _orig=lm.step, _calls=calls, **k):
            _calls.append(1)
            return _orig(*a, **k)

        monkeypatch.setattr(lm, "step", counted)
        generate_codes(lm, get_pattern("delay", n_q), 1, 5, do_sample=False)
        assert len(calls) == get_pattern("delay", n_q).num_steps(5)
