"""Batched weighted 1-D k-means against a naive per-problem numpy Lloyd and scikit-learn."""
import numpy as np
import pytest
import torch

from sketchtune_cli.compress.kmeans import weighted_kmeans_1d


def objective(x: torch.Tensor, weight: torch.Tensor | None, centroids: torch.Tensor) -> torch.Tensor:
    """Weighted sum of squared distances to the nearest centroid, per problem (float64). Direct O(n k)
    computation, independent of the module's prefix-sum machinery."""
    d2 = (x.double().unsqueeze(-1) - centroids.double().unsqueeze(-2)).square().amin(-1)
    w = torch.ones((), device=x.device, dtype=torch.float64) if weight is None else weight.double()
    return (w * d2).sum(-1)


def _skewed_problem(seed, batch=6, n=300):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=g) * 0.02
    # d^-4-like weights: a few columns dominate by orders of magnitude
    w = torch.exp(-4 * torch.log(torch.rand(batch, n, generator=g) * 0.9 + 0.1))
    return x, w / w.amax(1, keepdim=True)


def _naive_lloyd(x, w, c, iters):
    """Textbook Lloyd, one problem at a time: nearest centroid (ties to the lower), weighted means."""
    out = []
    for xr, wr, cr in zip(x.double().numpy(), w.double().numpy(), c.double().numpy()):
        cr = np.sort(cr.copy())
        for _ in range(iters):
            a = np.abs(xr[:, None] - cr[None, :]).argmin(1)
            new = cr.copy()
            for t in range(len(cr)):
                m = a == t
                assert wr[m].sum() > 0, "test data must not produce empty clusters"
                new[t] = (wr[m] * xr[m]).sum() / wr[m].sum()
            cr = np.sort(new)
        out.append(cr)
    return np.stack(out)


@pytest.mark.parametrize("init", ["kmeans++", "quantile"])
def test_objective_never_increases(init):
    x, w = _skewed_problem(0)
    gen = torch.Generator().manual_seed(0)
    res = weighted_kmeans_1d(x, w, 16, iters=60, init=init, generator=gen, track_objective=True)
    hist = torch.stack(res.history)  # [steps, batch]
    assert len(res.history) >= 2
    assert bool((hist[1:] <= hist[:-1] * (1 + 1e-6) + 1e-15).all())
    torch.testing.assert_close(hist[-1], objective(x, w, res.centroids))
    assert bool((res.centroids[:, 1:] >= res.centroids[:, :-1]).all())


def test_matches_naive_numpy_lloyd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 200, generator=g)
    w = torch.rand(5, 200, generator=g) + 0.05
    init = torch.quantile(x, torch.linspace(0.05, 0.95, 8), dim=1).T.contiguous()
    for iters in (1, 4, 30):
        ours = weighted_kmeans_1d(x, w, 8, iters=iters, init=init, tol=0).centroids
        ref = _naive_lloyd(x, w, init, iters)
        np.testing.assert_allclose(ours.double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_close_to_sklearn_optimum():
    from sklearn.cluster import KMeans

    x, w = _skewed_problem(2, batch=4, n=256)
    gen = torch.Generator().manual_seed(0)
    ours = objective(x, w, weighted_kmeans_1d(x, w, 16, iters=100, generator=gen).centroids)
    for b in range(x.shape[0]):
        km = KMeans(16, n_init=10, random_state=0).fit(x[b].double().numpy()[:, None], sample_weight=w[b].double().numpy())
        ref = objective(x[b:b + 1], w[b:b + 1], torch.from_numpy(np.sort(km.cluster_centers_[:, 0]))[None])
        assert float(ours[b]) <= 1.5 * float(ref[0]) + 1e-12, (b, float(ours[b]), float(ref[0]))


def test_fewer_distinct_values_than_centroids():
    x = torch.tensor([[0.0, 1.0, 1.0, 2.0, 0.0, 2.0] * 5, [3.0] * 30])
    res = weighted_kmeans_1d(x, None, 16, iters=20, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.centroids).all()
    assert float(objective(x, None, res.centroids).max()) == 0.0
    assert {0.0, 1.0, 2.0} <= set(res.centroids[0].tolist())


def test_empty_clusters_are_reseeded():
    """All centroids start at one point: re-seeding must still spread them over the data."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 100, generator=g)
    init = torch.zeros(3, 4)
    res = weighted_kmeans_1d(x, None, 4, iters=50, init=init)
    assert res.centroids.unique(dim=None).numel() >= 3 * 4 - 1
    baseline = objective(x, None, x.mean(1, keepdim=True))
    assert bool((objective(x, None, res.centroids) < 0.4 * baseline).all())


def test_heavy_sample_is_represented_exactly():
    x = torch.linspace(-1, 1, 101).repeat(2, 1)
    w = torch.ones_like(x)
    w[:, 37] = 1e6
    res = weighted_kmeans_1d(x, w, 4, iters=100, generator=torch.Generator().manual_seed(0))
    assert bool(((res.centroids - x[:, 37:38]).abs().amin(1) < 1e-4).all())


def test_seeded_broadcast_and_chunked():
    """Same seed -> same result; weights broadcast over rows; chunking does not change a fixed-init fit."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 3, 64, generator=g)
    w = torch.rand(1, 3, 64, generator=g)
    a = weighted_kmeans_1d(x, w, 8, generator=torch.Generator().manual_seed(7)).centroids
    b = weighted_kmeans_1d(x, w, 8, generator=torch.Generator().manual_seed(7)).centroids
    assert a.shape == (12, 3, 8) and torch.equal(a, b)
    init = torch.quantile(x, torch.linspace(0.1, 0.9, 8), dim=-1).permute(1, 2, 0).contiguous()
    whole = weighted_kmeans_1d(x, w, 8, init=init).centroids
    chunked = weighted_kmeans_1d(x, w, 8, init=init, max_chunk_bytes=1).centroids
    torch.testing.assert_close(whole, chunked)
    expanded = weighted_kmeans_1d(x, w.expand_as(x).clone(), 8, init=init).centroids
    torch.testing.assert_close(whole, expanded)


def test_restarts_keep_the_best_run_per_problem():
    """restarts=3 equals, problem by problem, the best of three single runs drawn in turn from the same
    generator (objectives recomputed directly), and reports that run's objective."""
    x, w = _skewed_problem(5, batch=40, n=128)
    x = x * (1 + torch.arange(40).unsqueeze(1) % 3)  # varied scales, so runs differ per problem
    gen = torch.Generator().manual_seed(11)
    singles = [weighted_kmeans_1d(x, w, 16, generator=gen).centroids for _ in range(3)]
    objs = torch.stack([objective(x, w, c) for c in singles])  # [3, batch]
    pick = objs.argmin(0)
    expected = torch.stack(singles)[pick, torch.arange(40)]
    res = weighted_kmeans_1d(x, w, 16, generator=torch.Generator().manual_seed(11), restarts=3)
    torch.testing.assert_close(res.centroids, expected)
    torch.testing.assert_close(res.objective, objs.amin(0), rtol=1e-6, atol=1e-15)
    assert bool((objs[0] > objs.amin(0)).any()), "test data too easy: restarts never helped"
    first = weighted_kmeans_1d(x, w, 16, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(first.centroids, singles[0])


def test_restarts_argument_checks():
    x, w = _skewed_problem(0, batch=2, n=64)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        weighted_kmeans_1d(x, w, 4, restarts=0)
    with pytest.raises(ValueError, match="single run"):
        weighted_kmeans_1d(x, w, 4, restarts=2, track_objective=True)
    quant = weighted_kmeans_1d(x, w, 4, init="quantile", restarts=5).centroids  # deterministic: runs once
    torch.testing.assert_close(quant, weighted_kmeans_1d(x, w, 4, init="quantile").centroids)
