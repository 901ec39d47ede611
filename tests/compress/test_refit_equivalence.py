"""The restructured LUT refit (directly built CSR, ``A^T H w`` as a scatter of ``H w``) against the refit it
replaced, kept here verbatim as a reference, and against float64 least squares with unused codes."""
import warnings

import numpy as np
import pytest
import torch

from sketchtune_cli.compress.refit import _RIDGE, _slots, refit_luts


def _previous_refit_rows(w, H, codes, lut):
    """``_refit_rows`` before issue 21 (COO -> CSR, rhs read from A^T H)."""
    R, cols = w.shape
    slots = lut.shape[1] * lut.shape[2]
    slot = _slots(codes, lut.shape[1], lut.shape[2])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        At = torch.sparse_coo_tensor(
            torch.stack([(torch.arange(R).unsqueeze(1) * slots + slot).reshape(-1), torch.arange(cols).repeat(R)]),
            torch.ones(R * cols), (R * slots, cols), check_invariants=False,
        ).to_sparse_csr()
    AtH = (At @ H).view(R, slots, cols)
    M = torch.zeros(R, slots, slots).scatter_add_(2, slot.unsqueeze(1).expand(R, slots, cols), AtH)
    rhs = torch.einsum("rsc,rc->rs", AtH, w)
    diag = M.diagonal(dim1=1, dim2=2)
    ridge = _RIDGE * diag.mean(1, keepdim=True).clamp_min(1e-30)
    diag.add_(ridge)
    rhs = rhs + ridge * lut.reshape(R, slots)
    L, info = torch.linalg.cholesky_ex(M)
    sol = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
    ok = (info == 0) & torch.isfinite(sol).all(1)
    return torch.where(ok.unsqueeze(1), sol, lut.reshape(R, slots)).view_as(lut)


def _problem(rows, cols, groups, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * cols, cols, generator=g) * torch.exp(0.5 * torch.randn(cols, generator=g))
    H = 2 * X.T @ X / X.shape[0] + 0.01 * torch.eye(cols)
    k = 2 ** bits
    W = torch.randn(rows, cols, generator=g)
    codes = torch.randint(0, k - 1, (rows, cols), generator=g)  # code k-1 is used by no column
    codes.view(rows, groups, -1)[:, :, :k - 1] = torch.arange(k - 1)  # every other slot at least once
    lut = torch.randn(rows, groups, k, generator=g).sort(-1).values
    return W, H, codes, lut


CASES = [(1, 2), (1, 4), (4, 2), (4, 4)]


@pytest.mark.parametrize("groups,bits", CASES)
def test_same_luts_as_the_previous_refit(groups, bits):
    W, H, codes, lut = _problem(40, 128, groups, bits)
    torch.testing.assert_close(refit_luts(W, H, codes, lut), _previous_refit_rows(W, H, codes, lut),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,bits", CASES)
def test_float64_least_squares_and_unused_codes(groups, bits):
    rows, cols, k = 10, 64, 2 ** bits
    W, H, codes, lut = _problem(rows, cols, groups, bits, seed=1)
    ours = refit_luts(W, H, codes, lut).double().numpy()
    root = np.linalg.cholesky(H.double().numpy()).T  # H = root^T root
    used = slice(0, k - 1)
    for r in range(rows):
        A = np.zeros((cols, groups, k))
        for j in range(cols):
            A[j, j // (cols // groups), int(codes[r, j])] = 1.0
        A = A[:, :, used].reshape(cols, -1)  # the unused code's column of A is zero: leave it out
        ref = np.linalg.lstsq(root @ A, root @ W[r].double().numpy(), rcond=None)[0].reshape(groups, k - 1)
        np.testing.assert_allclose(ours[r, :, used], ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours[:, :, k - 1], lut[:, :, k - 1].double().numpy(), rtol=0, atol=1e-6)
