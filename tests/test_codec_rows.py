"""The SEANet codec's time-major exact kernels: each row's bits independent of how many rows
come together and where they sit (the property chunked streaming rests on)."""

import pytest
import torch

from codeclm.codec.layers import RowsLinear, elu_rows

# (K, N) of the EnCodec 24 kHz layers' GEMMs: im2col convs, pointwise convs, transposed convs,
# the LSTM projections, the 1-channel output conv's taps (N=7 padded to 16)
SHAPES = [(96, 16), (16, 32), (32, 32), (128, 64), (192, 32), (512, 128), (1280, 256), (4096, 512),
          (512, 2048), (512, 4096), (256, 1280), (32, 7), (7, 32)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k,n", SHAPES)
def test_rows_linear_row_invariant(k, n, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(k * n)
        lin = RowsLinear(torch.randn(n, k), torch.randn(n))
        x, add = torch.randn(700, k), torch.randn(700, n)
        full, full_add = lin(x), lin(x, add=add)
        assert full.shape == (700, n)
        for start, rows in [(0, 1), (3, 2), (5, 7), (17, 64), (100, 333), (1, 699)]:
            assert torch.equal(lin(x[start:start + rows]), full[start:start + rows])
            assert torch.equal(lin(x[start:start + rows], add=add[start:start + rows]), full_add[start:start + rows])
    finally:
        torch.set_num_threads(previous)


def test_rows_linear_values():
    torch.manual_seed(0)
    w, b, x, add = torch.randn(7, 32), torch.randn(7), torch.randn(50, 32), torch.randn(50, 7)
    lin = RowsLinear(w, b)
    assert torch.allclose(lin(x), x @ w.t() + b, atol=1e-4)
    assert torch.allclose(lin(x, add=add), x @ w.t() + b + add, atol=1e-4)
    assert torch.allclose(lin(x[:1]), x[:1] @ w.t() + b, atol=1e-4)


def test_rows_linear_differentiable_fallback():
    w = torch.randn(8, 4, requires_grad=True)
    lin = RowsLinear(w, None)
    assert lin.kind == "rows"
    lin(torch.randn(3, 4)).sum().backward()
    assert w.grad is not None


def test_elu_rows_position_independent():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(100_003) * 3
        full = elu_rows(x)
        assert torch.allclose(full, torch.nn.functional.elu(x), rtol=1e-6, atol=1e-7)
        for start, n in [(0, 1), (5, 17), (1000, 31), (77, 5000), (3, 70000), (64, 64)]:
            assert torch.equal(elu_rows(x[start:start + n]), full[start:start + n])
    finally:
        torch.set_num_threads(previous)
