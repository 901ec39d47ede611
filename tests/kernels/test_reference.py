"""The PyTorch references against explicit loops and autograd; they define what the kernels must do."""
import pytest
import torch

from helpers import naive_weight
from sketchtune_kernels import (dequant_ref, lut_dequant, lut_grad, lut_grad_from_io, lut_grad_from_io_ref,
                                lut_grad_ref, lut_matmul, lut_matmul_ref, pack_codes)


def _case(rows, groups, group_size, bits, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, groups, group_size), generator=gen, dtype=torch.uint8)
    lut = torch.randn(rows, groups, 2**bits, generator=gen, dtype=torch.float64).to(dtype)
    return lut, codes, pack_codes(codes, bits)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dequant_and_matmul_match_loops(bits):
    lut, codes, packed = _case(3, 2, 5, bits)
    w = naive_weight(lut, codes)
    assert torch.equal(dequant_ref(lut, packed, bits, 10), w)
    x = torch.randn(4, 10, dtype=torch.float64)
    y = torch.zeros(4, 3, dtype=torch.float64)
    for t in range(4):
        for i in range(3):
            y[t, i] = sum(x[t, j] * w[i, j] for j in range(10))
    torch.testing.assert_close(lut_matmul_ref(x, lut, packed, bits, 10), y)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lut_grad_matches_loops(bits):
    _, codes, packed = _case(3, 2, 5, bits)
    grad_w = torch.randn(3, 10, dtype=torch.float64)
    expect = torch.zeros(3, 2, 2**bits, dtype=torch.float64)
    for i in range(3):
        for j in range(10):
            expect[i, j // 5, int(codes[i, j // 5, j % 5])] += grad_w[i, j]
    got = lut_grad_ref(grad_w, packed, bits, 2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expect)
    assert lut_grad_ref(grad_w.half(), packed, bits, 2).dtype == torch.float32


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gradcheck_matmul_path(bits):
    """The gather-based forward is differentiable w.r.t. lut and x; check it numerically in float64."""
    lut, _, packed = _case(3, 2, 3, bits)
    lut.requires_grad_(True)
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, lut: lut_matmul_ref(x, lut, packed, bits, 6), (x, lut))


class _LutMatmul(torch.autograd.Function):
    """The training path in miniature: backward uses lut_grad_ref (scatter-add) instead of autograd."""

    @staticmethod
    def forward(ctx, x, lut, packed, bits):
        ctx.save_for_backward(x, lut, packed)
        ctx.bits = bits
        return lut_matmul_ref(x, lut, packed, bits, x.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        x, lut, packed = ctx.saved_tensors
        w = dequant_ref(lut, packed, ctx.bits, x.shape[-1])
        grad_lut = lut_grad_from_io_ref(grad_y, x, packed, ctx.bits, lut.shape[1])
        return grad_y @ w, grad_lut, None, None


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gradcheck_scatter_add_backward(bits):
    lut, _, packed = _case(4, 3, 3, bits, seed=1)
    lut.requires_grad_(True)
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, lut: _LutMatmul.apply(x, lut, packed, bits), (x, lut))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lut_grad_equals_autograd_through_gather(bits):
    lut, codes, packed = _case(6, 4, 7, bits, dtype=torch.float32, seed=2)
    lut.requires_grad_(True)
    grad_w = torch.randn(6, 28)
    w = torch.gather(lut, 2, codes.long()).reshape(6, 28)
    (expect,) = torch.autograd.grad(w, lut, grad_w)
    torch.testing.assert_close(lut_grad_ref(grad_w, packed, bits, 4), expect)


def test_from_io_equals_lut_grad_of_outer_product():
    _, _, packed = _case(5, 2, 6, 4, seed=3)
    grad_y, x = torch.randn(2, 3, 5), torch.randn(2, 3, 12)
    grad_w = grad_y.reshape(6, 5).t() @ x.reshape(6, 12)
    torch.testing.assert_close(lut_grad_from_io_ref(grad_y, x, packed, 4, 2), lut_grad_ref(grad_w, packed, 4, 2))


def test_lut_grad_ref_is_deterministic():
    _, _, packed = _case(16, 2, 64, 4, seed=4)
    grad_w = torch.randn(16, 128)
    assert torch.equal(lut_grad_ref(grad_w, packed, 4, 2), lut_grad_ref(grad_w, packed, 4, 2))


def test_dispatch_torch_backend_fills_out():
    lut, _, packed = _case(3, 1, 8, 4, dtype=torch.float32)
    x, grad_w = torch.randn(2, 8), torch.randn(3, 8)
    for fn, args, shape in [
        (lut_dequant, (lut, packed, 4, 8), (3, 8)),
        (lut_matmul, (x, lut, packed, 4, 8), (2, 3)),
        (lut_grad, (grad_w, packed, 4, 1), (3, 1, 16)),
        (lut_grad_from_io, (torch.randn(2, 3), x, packed, 4, 1), (3, 1, 16)),
    ]:
        out = torch.full(shape, float("nan"))
        got = fn(*args, backend="torch", out=out)
        assert got is out and not out.isnan().any()
        assert torch.equal(out, fn(*args))  # backend=None on CPU is the reference
    with pytest.raises(ValueError):
        lut_dequant(lut, packed, 4, 8, backend="cuda")
    half = lut_dequant(lut, packed, 4, 8, backend="torch", dtype=torch.bfloat16)  # cast as it is written
    assert half.dtype == torch.bfloat16 and torch.equal(half, dequant_ref(lut, packed, 4, 8).to(torch.bfloat16))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_cached_index_entry_points_match_loops(bits):
    """The CPU training path (codes unpacked once into flat LUT positions) against explicit loops."""
    from sketchtune_kernels import lut_dequant_indexed, lut_flat_index, lut_grad_from_io_indexed

    lut, codes, packed = _case(3, 2, 5, bits)
    idx = lut_flat_index(packed, bits, lut.shape, 10)
    assert idx.dtype == torch.int32 and idx.shape == (30,)
    assert torch.equal(lut_dequant_indexed(lut, idx, 10), naive_weight(lut, codes))
    grad_y, x = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    grad_w = grad_y.t() @ x
    expect = torch.zeros(3, 2, 2**bits, dtype=torch.float64)
    for i in range(3):
        for j in range(10):
            expect[i, j // 5, int(codes[i, j // 5, j % 5])] += grad_w[i, j]
    torch.testing.assert_close(lut_grad_from_io_indexed(grad_y, x, idx, lut.shape), expect)
    assert lut_grad_from_io_indexed(grad_y.float(), x.float(), idx, lut.shape).dtype == torch.float32


def test_group_size_is_the_one_divisibility_check():
    from sketchtune_kernels import group_size

    assert group_size(12, 4) == 3
    with pytest.raises(ValueError, match=r"groups_per_row=5 does not divide in_features=12 of q_proj; pick a divisor"):
        group_size(12, 5, "q_proj")
    with pytest.raises(ValueError, match="groups_per_row=0"):
        group_size(12, 0)
    lut, _, packed = _case(3, 2, 5, 4)
    with pytest.raises(ValueError, match="groups_per_row=2 does not divide in_features=9"):
        dequant_ref(lut, packed, 4, 9)
