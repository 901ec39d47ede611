"""LUT refit (compress/refit.py) against an explicit float64 least-squares reference."""
import numpy as np
import pytest
import torch

from sketchtune_cli.compress.refit import refit_luts, refit_luts_unweighted, sort_luts
from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.compress.sketcher import dequantize, relative_output_error, sketch_layer


def _problem(rows=12, cols=48, groups=2, k=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(512, cols, generator=g) * torch.exp(0.5 * torch.randn(cols, generator=g))
    H = 2 * X.T @ X / X.shape[0] + 0.01 * torch.eye(cols)
    W = torch.randn(rows, cols, generator=g)
    codes = torch.randint(0, k, (rows, cols), generator=g)
    codes.view(rows, groups, -1)[:, :, :k] = torch.arange(k)  # every (group, code) slot used at least once
    lut = torch.randn(rows, groups, k, generator=g).sort(-1).values
    return W, H, codes, lut


def _reference(W, H, codes, groups, k):
    """Per row: the one-hot map A [cols, G*k] written out, then lstsq of H^(1/2) A l = H^(1/2) w."""
    W, H, codes = W.double().numpy(), H.double().numpy(), codes.numpy()
    rows, cols = W.shape
    root = np.linalg.cholesky(H).T  # H = root^T root
    out = np.zeros((rows, groups * k))
    for r in range(rows):
        A = np.zeros((cols, groups * k))
        for j in range(cols):
            A[j, (j // (cols // groups)) * k + codes[r, j]] = 1.0
        out[r] = np.linalg.lstsq(root @ A, root @ W[r], rcond=None)[0]
    return out.reshape(rows, groups, k)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_refit_is_the_least_squares_solution(groups):
    k = 4  # few slots so every (group, code) is used and the solution is unique
    W, H, codes, lut = _problem(groups=groups, k=k)
    ours = refit_luts(W, H, codes, lut).double().numpy()
    np.testing.assert_allclose(ours, _reference(W, H, codes, groups, k), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_dense_product_refit_is_the_least_squares_solution(groups):
    k = 4
    W, H, codes, lut = _problem(groups=groups, k=k)
    ours = refit_luts(W, H, codes, lut, product="dense").double().numpy()
    np.testing.assert_allclose(ours, _reference(W, H, codes, groups, k), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,k", [(1, 16), (4, 16), (2, 8), (4, 4)])
def test_dense_and_sparse_products_give_the_same_refit(groups, k):
    from sketchtune_cli.compress.refit import _grouped_one_hot_product, _one_hot_transposed, _slots

    W, H, codes, lut = _problem(rows=24, cols=128, groups=groups, k=k, seed=3)
    rows, cols = W.shape
    sparse = (_one_hot_transposed(_slots(codes, groups, k), groups * k) @ H).view(rows, groups * k, cols)
    torch.testing.assert_close(_grouped_one_hot_product(codes, groups, k, H), sparse, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(refit_luts(W, H, codes, lut, product="dense"), refit_luts(W, H, codes, lut),
                               rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="sparse"):
        refit_luts(W, H, codes, lut, product="csr")


def test_auto_product_is_dense_on_cuda_and_sparse_on_cpu():
    from sketchtune_cli.compress.sketcher import refit_product

    assert refit_product(CompressSettings(), "cpu") == "sparse"
    assert refit_product(CompressSettings(), "cuda") == "dense"
    assert refit_product(CompressSettings(refit_product="dense"), "cpu") == "dense"


@pytest.mark.parametrize("groups", [1, 2])
def test_unweighted_refit_is_the_least_squares_solution_for_identity_H(groups):
    k = 4
    W, _, codes, lut = _problem(groups=groups, k=k)
    codes[0, :] = codes[0, :] % 2  # row 0 uses 2 of its 4 codes per group: the other two keep their values
    ours = refit_luts_unweighted(W, codes, lut).double().numpy()
    ref = _reference(W[1:], torch.eye(W.shape[1]), codes[1:], groups, k)
    np.testing.assert_allclose(ours[1:], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[0, :, 2:], lut[0, :, 2:].double().numpy(), rtol=0, atol=0)
    first_group = slice(0, W.shape[1] // groups)
    assert ours[0, 0, 0] == pytest.approx(float(W[0, first_group][codes[0, first_group] == 0].mean()), rel=1e-5)


def test_refit_lowers_the_objective_and_keeps_unused_codes():
    W, H, codes, lut = _problem(groups=1, k=16)
    codes[:, :] = codes % 8  # codes 8..15 unused
    new = refit_luts(W, H, codes, lut)
    torch.testing.assert_close(new[..., 8:], lut[..., 8:], rtol=0, atol=1e-6)

    def objective(table):
        dw = W - table[:, 0].gather(1, codes)
        return float(((dw @ H) * dw).sum())
    assert objective(new) < objective(lut)


def test_sort_luts_keeps_the_dequantized_weights():
    _, _, codes, lut = _problem(groups=2, k=8)
    shuffled = lut[..., torch.randperm(8)]
    codes = codes.view(12, 2, -1) % 8
    before = shuffled.gather(-1, codes)
    sorted_lut, new_codes = sort_luts(shuffled, codes)
    assert bool((sorted_lut[..., 1:] >= sorted_lut[..., :-1]).all())
    torch.testing.assert_close(sorted_lut.gather(-1, new_codes), before, rtol=0, atol=0)


def test_refit_rounds_lower_the_layer_error():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1024, 64, generator=g) * torch.exp(torch.randn(64, generator=g))
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(32, 64, generator=g) * 0.05
    errors = []
    for rounds in (0, 1, 3):
        s = CompressSettings(bits=3, groups_per_row=2, lut_dtype="float32", lut_refit_rounds=rounds)
        sk, st = sketch_layer(W, H, s)
        assert bool((sk.lut[..., 1:] >= sk.lut[..., :-1]).all())
        assert st.relative_error == pytest.approx(relative_output_error(W, dequantize(sk), H), rel=1e-6)
        errors.append(st.relative_error)
    assert errors[1] < errors[0] and errors[2] < errors[1]
