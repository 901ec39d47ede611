"""The GPTQ-style code assignment (sketcher._assign_compensated) against the plain column loop it replaced:
same codes, at several groupings, bit widths and block sizes."""
import pytest
import torch

from sketchtune_cli.compress import sketcher
from sketchtune_cli.compress.settings import CompressSettings


def plain_assign(weights, prep, lut, block_size):
    """The previous implementation, kept as the reference: index per column, update the rest of the block
    through a full outer product, the rest of the matrix once per block."""
    rows, cols = weights.shape
    group_size = cols // lut.shape[1]
    perm, U = prep.perm, prep.upper
    Wp = weights[:, perm]
    col_group = perm // group_size
    mids = ((lut[..., 1:] + lut[..., :-1]) * 0.5).contiguous()
    codes_p = torch.empty(rows, cols, dtype=torch.long)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1t = Wp[:, i1:i2].t().contiguous()
        E1t = torch.empty_like(W1t)
        U1 = U[i1:i2, i1:i2]
        mids1 = mids[:, col_group[i1:i2]].transpose(0, 1).contiguous()
        lut1 = lut[:, col_group[i1:i2]].transpose(0, 1).contiguous()
        for j in range(i2 - i1):
            w = W1t[j]
            code = (mids1[j] < w.unsqueeze(1)).sum(1, keepdim=True)
            q = lut1[j].gather(1, code).squeeze(1)
            err = (w - q) / U1[j, j]
            if j + 1 < i2 - i1:
                W1t[j + 1:] -= U1[j, j + 1:].unsqueeze(1) * err.unsqueeze(0)
            E1t[j] = err
            codes_p[:, i1 + j] = code.squeeze(1)
        if i2 < cols:
            Wp[:, i2:].addmm_(E1t.t(), U[i1:i2, i2:], alpha=-1.0)
    codes = torch.empty_like(codes_p)
    codes[:, perm] = codes_p
    return codes


def _problem(rows, cols, groups, bits, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2048, cols, generator=gen) * (torch.rand(cols, generator=gen) * 3 + 0.1)
    H = X.T @ X / X.shape[0]
    W = torch.randn(rows, cols, generator=gen) * 0.05
    prep = sketcher._prepare(W, H, CompressSettings(groups_per_row=groups, bits=bits))
    lut = torch.sort(torch.randn(rows, groups, 2 ** bits, generator=gen) * 0.05, -1).values
    return W, prep, lut


def _objective(W, codes, lut, H):
    q = lut.gather(-1, codes.view(*lut.shape[:2], -1)).view_as(W)
    dw = W - q
    return float(((dw @ H) * dw).sum())


@pytest.mark.parametrize("rows,cols,groups,bits,block,inner", [
    (96, 128, 1, 4, 128, 32), (96, 128, 4, 4, 128, 32), (64, 192, 2, 2, 64, 16), (40, 100, 4, 3, 7, 3),
    (33, 96, 3, 4, 1, 1), (50, 160, 1, 4, 160, 160),
])
def test_same_codes_as_the_plain_loop(rows, cols, groups, bits, block, inner):
    W, prep, lut = _problem(rows, cols, groups, bits)
    expected = plain_assign(W.clone(), prep, lut, block)
    got = sketcher._assign_compensated(W.clone(), prep, lut, block, inner_block=inner)
    # The inner block sums the same updates in another order: a weight that lands within float rounding
    # of a midpoint may flip, nothing more.
    assert (got == expected).float().mean() >= 0.999
    assert got.min() >= 0 and got.max() < 2 ** bits


@pytest.mark.parametrize("rows,cols,groups,bits,block", [(96, 128, 4, 4, 128), (40, 100, 4, 3, 7), (33, 96, 3, 2, 32)])
def test_block_at_a_time_assignment_gives_the_plain_loops_codes(rows, cols, groups, bits, block):
    """The GPU path's structure (one kernels.lut_assign_block call per block, here through its PyTorch
    reference) against the plain loop; the Triton kernel itself: tests/kernels/test_triton_kernels.py."""
    W, prep, lut = _problem(rows, cols, groups, bits)
    expected = plain_assign(W.clone(), prep, lut, block)
    got = sketcher.assign_compensated_blocks(W.clone(), prep, lut, block, backend="torch")
    assert (got == expected).float().mean() >= 0.999


def test_assignment_beats_nearest_rounding_on_the_output_error():
    """An independent check of what the loop is for: under a correlated H the error-compensated codes give
    a lower output error tr(dW H dW^T) than plain nearest rounding of each weight."""
    rows, cols = 64, 96
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4096, 8, generator=gen)
    X = base @ torch.randn(8, cols, generator=gen) + 0.1 * torch.randn(4096, cols, generator=gen)
    H = X.T @ X / X.shape[0]
    W = torch.randn(rows, cols, generator=gen)
    prep = sketcher._prepare(W, H, CompressSettings(groups_per_row=1, bits=2, percdamp=0.01))
    lut = torch.linspace(-1.5, 1.5, 4).expand(rows, 1, 4).contiguous()
    compensated = sketcher._assign_compensated(W.clone(), prep, lut, 128)
    nearest = sketcher.nearest_codes(W.view(rows, 1, cols), lut).view(rows, cols)
    assert _objective(W, compensated, lut, H) < 0.8 * _objective(W, nearest, lut, H)
