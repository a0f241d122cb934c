"""The decoding step: fused K-codebook ops, no host syncs, the static cache and its compiled form.

``iter_codes(static=True)`` (fixed-shape cache, position as a tensor) and ``compile=True`` (that
step through ``torch.compile``) must give exactly the tokens of the default streaming decoder.
"""

import copy
import warnings

import pytest
import torch

from codeclm.errors import CodecLMError
from codeclm.lm import LMConfig, TokenLM, generate, get_pattern
from codeclm.lm.generate import generate_codes, iter_codes
from codeclm.streaming import StreamingError

CARD = 16


def _lm(positional="sinusoidal", cross=False, n_q=3, bias_heads=False, max_seq_len=128) -> TokenLM:
    torch.manual_seed(0)
    cfg = LMConfig(n_q=n_q, card=CARD, dim=32, num_heads=2, num_layers=2, max_seq_len=max_seq_len,
                   positional=positional, cross_attention=cross, cond_dim=24 if cross else None,
                   bias_heads=bias_heads)
    lm = TokenLM(cfg).eval()
    with torch.no_grad():
        for p in lm.parameters():  # larger than the 0.02 init: confident, tie-free argmaxes
            p.normal_(0, 0.3)
    return lm


def _cond(cross: bool, batch: int = 2):
    if not cross:
        return None, None
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(batch, 5, 24, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[-1, 3:] = False  # padding in the last item
    return cond, mask


def _runs(lm, pattern, cross, **mode):
    """Greedy, seeded sampling (top-k + top-p) and a prompt continuation; CFG when conditioned."""
    cond, mask = _cond(cross)
    kw = {"guidance_scale": 3.0} if cross else {}
    greedy = generate_codes(lm, pattern, 2, 9, cond, mask, do_sample=False, **kw, **mode)
    sampled = generate_codes(lm, pattern, 2, 9, cond, mask, temperature=1.2, top_k=8, top_p=0.9,
                             generator=torch.Generator().manual_seed(3), **kw, **mode)
    prompt = torch.randint(0, CARD, (2, lm.config.n_q, 3), generator=torch.Generator().manual_seed(4))
    continued = generate_codes(lm, pattern, 2, 9, cond, mask, do_sample=False, prompt_codes=prompt, **kw, **mode)
    return greedy, sampled, continued


# -- the K codebooks in one op -----------------------------------------------------------------
@pytest.mark.parametrize("bias_heads", [False, True])
def test_fused_codebooks_match_per_codebook_modules(bias_heads):
    lm = _lm(bias_heads=bias_heads)
    seq = torch.randint(0, CARD + 1, (2, 3, 7), generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():  # gradients on: the K modules one by one (training path)
        looped = lm(seq)
    with torch.no_grad():
        tables = lm._codebook_tables()
        assert tables.emb is not None and tables.head_w is not None
        assert (tables.head_b is not None) == bias_heads
        fused = lm(seq)
        hidden = torch.randn(2, 1, 32)
        one = lm._head_logits(hidden, tables)
    torch.testing.assert_close(fused, looped, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(one, lm._head_logits(hidden, None), atol=1e-6, rtol=1e-6)
    assert fused.is_contiguous() and one.is_contiguous()
    # parameter names and shapes are those of the per-codebook modules (checkpoints, MusicGen import)
    names = dict(lm.named_parameters())
    assert names["emb.2.weight"].shape == (CARD + 1, 32) and names["heads.1.weight"].shape == (CARD, 32)


def test_stacked_layout_survives_conversions_and_saving(tmp_path):
    from safetensors.torch import load_file, save_file

    lm = _lm(bias_heads=True)
    seq = torch.randint(0, CARD + 1, (2, 3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = lm(seq)
        state = {k: v.detach().contiguous() for k, v in lm.state_dict().items()}
        save_file(state, str(tmp_path / "lm.safetensors"))  # views of one tensor: still savable
        loaded = load_file(str(tmp_path / "lm.safetensors"))
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        copies = {"deepcopy": copy.deepcopy(lm), "double": copy.deepcopy(lm).double()}
        assigned = copy.deepcopy(lm)
        assigned.load_state_dict({k: v.clone() for k, v in loaded.items()}, assign=True)
        copies["assign"] = assigned
        for name, other in copies.items():
            tables = other._codebook_tables()
            assert tables.emb is not None and tables.head_w is not None and tables.head_b is not None, name
            torch.testing.assert_close(other(seq.clone()).float(), ref, atol=1e-5, rtol=1e-5)
        # in-place updates (an optimizer step) are seen by the fused path: the views alias the parameters
        lm.heads[1].weight.add_(1.0)
        lm.emb[2].weight.mul_(-1.0)
        with torch.enable_grad():
            expected = lm(seq)
        torch.testing.assert_close(lm(seq), expected, atol=1e-6, rtol=1e-6)
        # a parameter replaced behind the model's back: the per-codebook path, same results
        lm.emb[0].weight = torch.nn.Parameter(lm.emb[0].weight.detach().clone())
        assert lm._codebook_tables().emb is None
        torch.testing.assert_close(lm(seq), expected, atol=1e-6, rtol=1e-6)


def test_fused_embedding_rejects_out_of_range_ids():
    lm = _lm()
    seq = torch.zeros(1, 3, 2, dtype=torch.long)
    seq[0, 1, 0] = CARD + 1  # would silently read codebook 2's table if not checked
    with torch.no_grad(), pytest.raises((IndexError, RuntimeError)):
        lm(seq)


@pytest.mark.parametrize("static", [False, True])
def test_step_work_does_not_grow_with_k(static):
    """Module calls per decoding step are the same for 2 and 8 codebooks (no loop over K)."""
    counts = {}
    for n_q in (2, 8):
        lm = _lm(n_q=n_q)
        calls = []
        hooks = [m.register_forward_hook(lambda *a, calls=calls: calls.append(1)) for m in lm.modules()]
        generate_codes(lm, get_pattern("parallel", n_q), 1, 6, do_sample=False, static=static)
        for h in hooks:
            h.remove()
        counts[n_q] = len(calls)
    assert counts[2] == counts[8]


@pytest.mark.parametrize("static", [False, True])
def test_step_loop_never_reads_the_device(monkeypatch, static):
    """After the set-up, no step converts a tensor to a Python value (no host sync)."""
    lm = _lm(cross=True)
    cond, mask = _cond(True)
    it = iter_codes(lm, get_pattern("delay", 3), 2, 8, cond, mask, guidance_scale=3.0, temperature=1.0,
                    top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0), static=static)
    chunks = [next(it)]  # set-up done (prompt checks, host index lists), several steps run

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the step loop")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    chunks += list(it)
    monkeypatch.undo()
    assert torch.cat(chunks, 2).shape == (2, 3, 8)


# -- static cache == streaming ----------------------------------------------------------------
@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("name", ["delay", "flatten"])
def test_static_gives_the_eager_tokens(positional, cross, name):
    lm = _lm(positional, cross)
    pattern = get_pattern(name, 3)
    eager = _runs(lm, pattern, cross)
    static = _runs(lm, pattern, cross, static=True)
    for a, b in zip(eager, static):
        assert torch.equal(a, b)
    assert not torch.equal(eager[0], eager[1])  # sampling did something


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
def test_static_step_logits_and_fixed_shapes(positional):
    lm = _lm(positional, cross=True)
    cond, mask = _cond(True)
    seq = torch.randint(0, CARD + 1, (2, 3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with lm.streaming(2):
            ref = [lm.step(seq[:, :, :4], cond, mask)] + [lm.step(seq[:, :, s:s + 1]) for s in range(4, 9)]
        cache = lm.new_static_cache(2, 16, cond, mask)
        ptrs = [t.data_ptr() for t in cache.keys + cache.values]
        pos = torch.tensor([4])
        out = [lm.static_step(seq[:, :, :4], torch.arange(4), cache)]  # prefill
        for s in range(4, 9):
            out.append(lm.static_step(seq[:, :, s:s + 1], pos, cache))
            pos += 1
        assert all(t.shape == (2, 2, 16, 16) for t in cache.keys + cache.values)
        assert [t.data_ptr() for t in cache.keys + cache.values] == ptrs  # written in place
        assert torch.count_nonzero(cache.keys[0][:, :, 9:]) == 0  # nothing beyond the fed positions
    torch.testing.assert_close(torch.stack(out), torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_static_cache_errors():
    lm = _lm(cross=True, max_seq_len=32)
    cond, mask = _cond(True)
    with pytest.raises(StreamingError):
        lm.new_static_cache(2, 33, cond, mask)
    with pytest.raises(CodecLMError, match="pass cond"):
        lm.new_static_cache(2, 8)
    with pytest.raises(CodecLMError, match="no cross-attention"):
        _lm().new_static_cache(2, 8, cond, mask)
    bidirectional = TokenLM(LMConfig(n_q=2, card=8, dim=16, num_heads=2, num_layers=1, causal=False))
    with pytest.raises(StreamingError, match="bidirectional"):
        bidirectional.new_static_cache(1, 4)
    cache = lm.new_static_cache(2, 8, cond, mask)
    with torch.no_grad(), pytest.raises(StreamingError, match="batch"):
        lm.static_step(torch.zeros(1, 3, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), cache)


# -- compiled ---------------------------------------------------------------------------------
def test_compile_failure_falls_back_with_a_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("simulated: no C++ compiler")
        return run

    monkeypatch.setattr(generate, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    lm = _lm(cross=True)
    cond, mask = _cond(True)
    eager = generate_codes(lm, get_pattern("delay", 3), 2, 7, cond, mask, guidance_scale=3.0, do_sample=False)
    for _ in range(2):  # the second call does not try again, and says so again
        with pytest.warns(RuntimeWarning, match="simulated: no C.. compiler"):
            fallback = generate_codes(lm, get_pattern("delay", 3), 2, 7, cond, mask, guidance_scale=3.0,
                                      do_sample=False, compile=True)
        assert torch.equal(fallback, eager)
    assert isinstance(generate._COMPILED[TokenLM], RuntimeError)


def _compile_works() -> bool:
    try:
        return bool(torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.ones(2)).eq(3).all())
    except Exception:  # noqa: BLE001 -- any failure means: not available here
        return False


@pytest.fixture(scope="module")
def compile_available():
    if not _compile_works():
        pytest.skip("torch.compile does not work here (no C++ compiler?)")


def _compiled_equals_eager(positional, cross):
    import torch._dynamo
    from torch._dynamo.utils import counters

    lm = _lm(positional, cross)
    pattern = get_pattern("delay", 3)
    eager = _runs(lm, pattern, cross)
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile of the LM step failed")  # no silent fallback
        compiled = _runs(lm, pattern, cross, compile=True)
        # one graph for every step of every run (same batch, length and conditioning buckets):
        # the position is a tensor, so nothing recompiles
        assert counters["stats"]["unique_graphs"] - graphs == 1
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = generate_codes(lm, pattern, 2, 20, *_cond(cross), do_sample=False, compile=True,
                                   **({"guidance_scale": 3.0} if cross else {}))
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    assert torch.equal(again, generate_codes(lm, pattern, 2, 20, *_cond(cross), do_sample=False,
                                             **({"guidance_scale": 3.0} if cross else {})))


def test_compiled_gives_the_eager_tokens(compile_available):
    """MusicGen's case: sinusoidal positions, cross-attention, CFG."""
    _compiled_equals_eager("sinusoidal", True)


@pytest.mark.slow
def test_compiled_gives_the_eager_tokens_rope(compile_available):
    _compiled_equals_eager("rope", False)
