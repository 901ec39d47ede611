"""sketch_layer (docs/method.md §2 steps 1-6) against independent, unblocked float64 references."""
import numpy as np
import pytest
import torch

from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.compress.sketcher import (
    dequantize, nearest_codes, relative_output_error, sketch_layer,
)


def _correlated_inputs(cols, tokens=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    scale = torch.exp(torch.randn(cols, generator=g))  # uneven column magnitudes, as in real activations
    return (torch.randn(tokens, cols, generator=g) @ mix) * scale


def _layer(rows=64, cols=128, seed=0):
    X = _correlated_inputs(cols, seed=seed)
    H = (2.0 / X.shape[0]) * X.T @ X
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed + 100)) * 0.05
    return W, H, X


def _settings(**kw):
    # LUT refit off: these tests check the k-means + GPTQ steps against references (test_refit.py covers it)
    base = dict(bits=4, groups_per_row=1, lut_dtype="float32", kmeans_iters=50, lut_refit_rounds=0)
    base.update(kw)
    return CompressSettings(**base)


def _naive_gptq(W, H, lut, s):
    """Unblocked column loop in float64 with numpy: H^-1's upper Cholesky factor, nearest LUT value of the
    column's ORIGINAL group, error pushed onto all later columns."""
    W = W.double().numpy().copy()
    H = H.double().numpy().copy()
    lut = lut.double().numpy()
    rows, cols = W.shape
    gs = cols // lut.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = np.argsort(-np.diag(H), kind="stable") if s.act_order else np.arange(cols)
    Hp = H[np.ix_(perm, perm)] + s.percdamp * np.mean(np.diag(H)) * np.eye(cols)
    U = np.linalg.cholesky(np.linalg.inv(Hp)).T
    Wp = W[:, perm]
    codes = np.zeros((rows, cols), dtype=np.int64)
    for i in range(cols):
        table = lut[:, perm[i] // gs, :]
        c = np.abs(Wp[:, i:i + 1] - table).argmin(1)
        q = table[np.arange(rows), c]
        err = (Wp[:, i] - q) / U[i, i]
        Wp[:, i:] -= err[:, None] * U[i, i:][None, :]
        codes[:, perm[i]] = c
    return codes


def test_without_compensation_codes_are_nearest_lut_values():
    W, H, _ = _layer()
    sk, _ = sketch_layer(W, H, _settings(error_compensation=False))
    lut = sk.lut.double()[:, 0]  # G = 1
    ref = (W.double()[:, :, None] - lut[:, None, :]).abs().argmin(-1)
    W_hat = dequantize(sk)
    np.testing.assert_allclose(W_hat.numpy(), lut.gather(1, ref).float().numpy(), rtol=0, atol=1e-7)
    assert torch.equal(nearest_codes(W.view(64, 1, -1), sk.lut.float()), sk.codes.long())


@pytest.mark.parametrize("groups", [1, 4])
def test_compensated_loop_matches_naive_reference(groups):
    W, H, _ = _layer()
    s = _settings(groups_per_row=groups)
    sk, _ = sketch_layer(W, H, s)
    ref = _naive_gptq(W, H, sk.lut, s)
    ours = sk.codes.reshape(W.shape[0], -1).long().numpy()
    assert (ours == ref).mean() > 0.999  # no compensation would differ in ~1-5% of codes here


def test_block_size_does_not_change_the_result():
    W, H, _ = _layer(cols=96)
    results = [sketch_layer(W, H, _settings(groups_per_row=2, block_size=b)) for b in (1, 7, 128)]
    base_codes = results[0][0].codes
    for sk, st in results[1:]:
        assert torch.equal(sk.lut, results[0][0].lut)
        assert (sk.codes == base_codes).float().mean() > 0.995
        assert st.relative_error == pytest.approx(results[0][1].relative_error, rel=1e-3)


def test_compensation_lowers_output_error():
    W, H, X = _layer(rows=96, cols=128)
    on = sketch_layer(W, H, _settings(bits=3))[1].relative_error
    off = sketch_layer(W, H, _settings(bits=3, error_compensation=False))[1].relative_error
    assert on < 0.9 * off


def test_relative_error_equals_explicit_output_error():
    W, H, X = _layer()
    sk, st = sketch_layer(W, H, _settings())
    W_hat = dequantize(sk)
    Y, Y_hat = X.double() @ W.double().T, X.double() @ W_hat.double().T
    explicit = float(((Y - Y_hat) ** 2).sum() / (Y ** 2).sum())
    assert st.relative_error == pytest.approx(explicit, rel=1e-3)
    assert relative_output_error(W, W_hat, H) == pytest.approx(explicit, rel=1e-3)


def test_dead_columns():
    W, H, _ = _layer()
    dead = [3, 77]
    H[dead, :] = 0
    H[:, dead] = 0
    sk, st = sketch_layer(W, H, _settings(groups_per_row=2))
    assert st.dead_columns == 2
    W_hat = dequantize(sk)
    # a dead column is coded as 0 would be: the LUT value nearest zero
    lut = sk.lut.float()
    for j in dead:
        table = lut[:, j // 64]
        nearest_zero = table.gather(1, table.abs().argmin(1, keepdim=True)).squeeze(1)
        torch.testing.assert_close(W_hat[:, j], nearest_zero)
    # ...and its (never used) original values do not influence the fit
    W2 = W.clone()
    W2[:, dead] = 100.0
    sk2, _ = sketch_layer(W2, H, _settings(groups_per_row=2))
    assert torch.equal(sk2.lut, sk.lut) and torch.equal(sk2.codes, sk.codes)


def test_act_order_keeps_group_membership():
    """Groups on very different scales, and a Hessian whose act-order interleaves them: every column must
    still be coded from its own (original) group's LUT."""
    rows, cols, G = 32, 64, 4
    g = torch.Generator().manual_seed(5)
    W = torch.randn(rows, cols, generator=g) * 0.01 + torch.arange(G).repeat_interleave(cols // G) * 10.0
    X = torch.randn(1024, cols, generator=g) * torch.rand(cols, generator=g).mul(3).add(0.1)
    H = (2.0 / 1024) * X.T @ X
    perm = torch.argsort(H.diagonal(), descending=True)
    assert not torch.equal(perm // (cols // G), torch.sort(perm // (cols // G)).values)  # really interleaved
    sk, st = sketch_layer(W, H, _settings(groups_per_row=G, act_order=True))
    for grp in range(G):
        part = W[:, grp * 16:(grp + 1) * 16]
        assert bool((sk.lut[:, grp].float() >= part.amin(1, keepdim=True) - 1e-4).all())
        assert bool((sk.lut[:, grp].float() <= part.amax(1, keepdim=True) + 1e-4).all())
    assert (dequantize(sk) - W).abs().max() < 0.05
    ref = _naive_gptq(W, H, sk.lut, _settings(groups_per_row=G, act_order=True))
    assert (sk.codes.reshape(rows, -1).long().numpy() == ref).mean() > 0.99


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_shapes_and_ranges(bits, groups):
    W, H, _ = _layer(rows=16, cols=64)
    sk, st = sketch_layer(W, H, _settings(bits=bits, groups_per_row=groups, lut_dtype="bfloat16"))
    assert sk.bits == bits
    assert sk.lut.shape == (16, groups, 2 ** bits) and sk.lut.dtype == torch.bfloat16
    assert sk.codes.shape == (16, groups, 64 // groups) and sk.codes.dtype == torch.uint8
    assert int(sk.codes.max()) < 2 ** bits
    assert 0 < st.relative_error < {2: 0.4, 3: 0.15, 4: 0.05}[bits]


def test_more_bits_and_groups_lower_the_error():
    W, H, _ = _layer()
    err = {(b, G): sketch_layer(W, H, _settings(bits=b, groups_per_row=G))[1].relative_error
           for b in (2, 3, 4) for G in (1, 4)}
    assert err[(2, 1)] > err[(3, 1)] > err[(4, 1)]
    for b in (2, 3, 4):
        assert err[(b, 4)] < err[(b, 1)]


def test_cholesky_failure_raises_damping():
    cols = 16
    W = torch.randn(8, cols, generator=torch.Generator().manual_seed(0))
    # indefinite "Hessian": fails with damping 0.1 * mean(diag) = 0.1, succeeds at 1.0
    H = torch.eye(cols)
    H[0, 1] = H[1, 0] = 1.5
    sk, st = sketch_layer(W, H, _settings(percdamp=0.1))
    assert st.damping_fraction == pytest.approx(1.0)
    assert st.damping == pytest.approx(1.0)
    # singular H (rank 1) without damping: the retry starts from a tiny damping
    sk, st = sketch_layer(W, torch.ones(cols, cols), _settings(percdamp=0.0))
    assert st.damping > 0
    assert torch.isfinite(dequantize(sk)).all()


def test_hessian_weighting_protects_sensitive_columns():
    """A column with huge input energy (small d_j) must be coded more precisely with p = 4 than p = 0."""
    W, H, _ = _layer(rows=64, cols=64)
    H[7, 7] *= 1e4
    err = {}
    for p in (0.0, 4.0):
        sk, _ = sketch_layer(W, H, _settings(bits=2, exponent=p, error_compensation=False))
        err[p] = float((dequantize(sk)[:, 7] - W[:, 7]).abs().mean())
    assert err[4.0] < 0.2 * err[0.0]


def test_no_calibration_path():
    W, _, _ = _layer()
    # the data-free variant: unweighted k-means, no error feedback
    s = _settings().model_copy(update={"exponent": 0.0, "error_compensation": False, "act_order": False})
    sk, st = sketch_layer(W, None, s)
    assert st.relative_error is None and st.damping == 0 and st.dead_columns == 0
    # same as an identity Hessian, where weights are uniform and U is diagonal (nothing to compensate)
    sk_i, _ = sketch_layer(W, torch.eye(W.shape[1]), _settings())
    torch.testing.assert_close(sk.lut, sk_i.lut)
    assert torch.equal(sk.codes, sk_i.codes)
    # ...which is plain nearest-value coding
    assert torch.equal(sk.codes.long(), nearest_codes(W.view(W.shape[0], 1, -1), sk.lut.float()))


def test_seed_is_reproducible_and_device_follows_W():
    W, H, _ = _layer(rows=16, cols=32)
    a, _ = sketch_layer(W, H, _settings(seed=3))
    b, _ = sketch_layer(W, H, _settings(seed=3))
    assert torch.equal(a.lut, b.lut) and torch.equal(a.codes, b.codes)
    assert a.lut.device == W.device and a.codes.device == W.device
