"""Int8 weight-only decoding (an option; fp32 stays exact): close logits, the same API."""

import pytest
import torch

from codeclm.lm.config import LMConfig
from codeclm.lm.generate import generate_codes
from codeclm.lm.quant import Int8Linear, int8_available, quantize_int8
from codeclm.lm.transformer import TokenLM

pytestmark = pytest.mark.skipif(not int8_available(), reason="no torch._weight_int8pack_mm")


def _lm():
    torch.manual_seed(0)
    return TokenLM(LMConfig(n_q=2, card=32, dim=64, num_heads=4, num_layers=2, max_seq_len=64)).eval()


def test_int8_linear_close_to_fp32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin)
    x = torch.randn(3, 5, 64)
    ref = lin(x)
    err = (q(x) - ref).abs().max() / ref.abs().max()
    assert q.qweight.dtype == torch.int8 and err < 0.03


def test_quantized_lm_decodes_and_leaves_original_alone():
    lm = _lm()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    q = quantize_int8(lm)
    assert any(isinstance(m, Int8Linear) for m in q.modules())
    assert not any(isinstance(m, Int8Linear) for m in lm.modules())
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())
    pattern = lm.config.get_pattern()
    seq = torch.randint(0, 32, (1, 2, 10))
    with torch.no_grad():
        ref, got = lm(seq), q(seq)
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()
    codes = generate_codes(q, pattern, 1, 8, do_sample=False)
    assert codes.shape == (1, 2, 8)
    static = generate_codes(q, pattern, 1, 8, do_sample=False, static=True)
    assert torch.equal(codes, static)


def test_int8_linear_of_a_transposed_weight():
    # DiaModel keeps widening layers as the transpose of an [in, out] tensor (faster fp32 decoding);
    # the int8 kernel needs its own contiguous [out, in] copy
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 96, bias=False)
    lin.weight.data = lin.weight.data.t().contiguous().t()
    assert not lin.weight.is_contiguous()
    q = Int8Linear(lin)
    x = torch.randn(2, 32)
    assert float((q(x) - lin(x)).norm() / lin(x).norm()) < 0.02
