"""Batched weighted 1-D k-means (Lloyd) for fitting LUTs (docs/method.md §2 step 5).

Every (row, group) of a layer is an independent 1-D problem; all of them are solved at once as tensors.
In one dimension Lloyd's assignment step is "which interval between the midpoints of the sorted
centroids holds x", so after sorting each problem's values once, a whole iteration reduces to a
``searchsorted`` of the k-1 midpoints into the sorted values plus differences of prefix sums of ``w`` and
``w*x``: O(k log n) per problem and iteration instead of O(n k). The prefix sums are float64 because the
sample weights (``d_j^-p``) span many orders of magnitude and float32 differences of large running sums
would lose the light clusters. k-means++ works on the same prefix sums: a draw with probability
~ w D^2 picks a cluster by its potential and bisects inside it, and a candidate's gain only involves the
samples between the midpoints to its neighbours, so the greedy variant costs no pass over the data either.
Memory is O(chunk * n), chunked over the leading dimension.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# bytes of working memory per element of a chunk: sorted values and weights, three float64 prefix sums,
# transient sort indices
_BYTES_PER_ELEMENT = 48
_CHUNK_BYTES = 512 * 2 ** 20  # max_chunk_bytes's default


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [..., k], ascending
    iterations: int  # most Lloyd iterations any chunk ran
    converged: bool  # every problem reached a fixed point of the assignments
    objective: torch.Tensor  # [...] float64, final weighted squared error of each problem
    history: list[torch.Tensor] = field(default_factory=list)  # objective [...] after init and each iteration


def weighted_kmeans_1d(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    k: int,
    iters: int = 100,
    init: str | torch.Tensor = "kmeans++",
    generator: torch.Generator | None = None,
    local_trials: int | None = None,
    tol: float = 1e-4,
    track_objective: bool = False,
    max_chunk_bytes: int = _CHUNK_BYTES,
    restarts: int = 1,
) -> KMeansResult:
    """Fits ``k`` centroids to each problem along the last dim of ``x [..., n]``.

    ``weight`` (non-negative, broadcastable to ``x``; None = all ones) weights each sample's squared error.
    ``init``: "kmeans++" (weighted, seeded by ``generator``; ``local_trials`` > 1 = greedy variant),
    "quantile" (unweighted quantiles of the values) or a tensor ``[..., k]`` of starting centroids.
    ``local_trials``: candidates per k-means++ step, keeping the one that lowers the potential most (None =
    2 + ln k, scikit-learn's greedy default; 1 = plain k-means++). With the very skewed ``d^-p`` weights Lloyd
    stops after a handful of iterations, so the start decides the result: plain k-means++ ended ~1.5x
    above scikit-learn's objective in our tests, the greedy start within ~1.1x.
    Empty clusters are re-seeded at the sample with the largest weighted error (one per problem per
    iteration); problems with fewer distinct values than ``k`` end with repeated centroids.
    ``restarts``: independent k-means++ starts per problem (scikit-learn's ``n_init``); each problem keeps
    the run with the lowest objective. Lloyd from one start ends in a start-dependent local optimum; 8
    starts lowered the sketcher's layer error ~5% on the embedded model (but not its held-out perplexity,
    which moved with the seed as much as without restarts). Deterministic inits (quantile, a tensor) run
    once whatever ``restarts`` says.
    Stops when no assignment changes, or (``tol`` > 0, scikit-learn's rule) when every problem's squared
    centroid shift is below ``tol`` times the variance of its values: the tail of Lloyd's iterations moves
    centroids by amounts far below the LUT's bf16 resolution.
    """
    if x.dim() < 2:
        raise ValueError("x must be [..., n] with at least one leading (batch) dimension")
    x = x.float()
    n = x.shape[-1]
    if local_trials is None:
        local_trials = 2 + int(math.log(k))
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if restarts > 1 and track_objective:
        raise ValueError("track_objective follows a single run: use restarts=1")
    if not (isinstance(init, str) and init == "kmeans++"):
        restarts = 1
    weight = torch.ones((), device=x.device) if weight is None else weight.float()
    weight = torch.broadcast_to(weight, x.shape)
    chunk = max(1, max_chunk_bytes // max(1, _BYTES_PER_ELEMENT * n * math.prod(x.shape[1:-1])))
    outs, objs, hist, its, conv = [], [], [], 0, True
    for s in range(0, x.shape[0], chunk):
        xc = x[s:s + chunk].reshape(-1, n)
        wc = weight[s:s + chunk].reshape(-1, n)
        ic = init if isinstance(init, str) else init[s:s + chunk].reshape(-1, k).float()
        lead = x[s:s + chunk].shape[:-1]
        c, obj, h, it, ok = _kmeans_flat(xc, wc, k, iters, ic, generator, local_trials, tol, track_objective,
                                         restarts)
        outs.append(c.reshape(*lead, k))
        objs.append(obj.reshape(lead))
        hist.append([o.reshape(lead) for o in h])
        its, conv = max(its, it), conv and ok
    history = _merge_histories(hist) if track_objective else []
    return KMeansResult(torch.cat(outs), its, conv, torch.cat(objs), history)


def _merge_histories(hist):
    """Chunks stop at different iterations: a finished chunk keeps its last objective."""
    steps = max(map(len, hist))
    return [torch.cat([h[min(i, len(h) - 1)] for h in hist]) for i in range(steps)]


def _kmeans_flat(x, w, k, iters, init, gen, local_trials, tol, track, restarts):
    """One chunk: ``x``, ``w`` [B, n] -> (centroids [B, k], objective [B], objective history, iterations,
    converged). The sort and prefix sums are shared by all restarts."""
    xs, order = x.sort(dim=1)
    ws = w.gather(1, order)
    del order
    # work relative to each problem's median: keeps the float64 prefix sums (and the w*x^2 potentials
    # built from them) free of cancellation when the values sit far from zero
    shift = xs[:, xs.shape[1] // 2:xs.shape[1] // 2 + 1].clone()
    xs = xs - shift
    sums = _PrefixSums(xs, ws)
    best = best_obj = history = None
    its, converged = 0, True
    for _ in range(restarts):
        if isinstance(init, torch.Tensor):
            c = init.to(xs.device, torch.float32) - shift
        elif init == "quantile":
            c = _quantile_init(xs, k)
        elif init == "kmeans++":
            c = _kmeans_pp(sums, k, gen, local_trials)
        else:
            raise ValueError(f"unknown k-means init {init!r}: use 'kmeans++', 'quantile' or a tensor")
        c, history, it, ok = _lloyd(xs, ws, sums, c.sort(dim=1).values, iters, tol, track)
        obj = _sorted_objective(xs, ws, c)
        its, converged = max(its, it), converged and ok
        if best is None:
            best, best_obj = c, obj
        else:  # ties keep the earlier run, so restarts=1 and restarts=r share their first result
            better = obj < best_obj
            best = torch.where(better.unsqueeze(1), c, best)
            best_obj = torch.where(better, obj, best_obj)
    return best + shift, best_obj, history, its, converged


def _lloyd(xs, ws, sums, c, iters, tol, track):
    """Lloyd's iterations from sorted centroids ``c`` [B, k] (values relative to the shift)."""
    history = [_sorted_objective(xs, ws, c)] if track else []
    can_reseed = torch.ones(xs.shape[0], dtype=torch.bool, device=xs.device)
    shift_tol = tol * xs.var(dim=1) if tol > 0 else torch.full((xs.shape[0],), -1.0, device=xs.device)
    done = torch.zeros(xs.shape[0], dtype=torch.bool, device=xs.device)
    prev_bounds, converged, it = None, False, 0
    for it in range(1, iters + 1):
        c_new, bounds, empty = _lloyd_step(sums, c)
        reseeded = _reseed_empty(xs, ws, c_new, empty, can_reseed)
        c_new = c_new.sort(dim=1).values
        # per-problem stopping, so the result does not depend on which problems share a chunk
        settled = (c_new - c).square().sum(1) <= shift_tol
        if prev_bounds is not None:
            settled |= (bounds == prev_bounds).all(1)
        c = torch.where(done.unsqueeze(1), c, c_new)
        done |= settled & ~reseeded
        if track:
            history.append(_sorted_objective(xs, ws, c))
        if bool(done.all()):
            converged = True
            break
        prev_bounds = bounds
    return c, history, it, converged


class _PrefixSums:
    """Float64 prefix sums of w, w*x, w*x^2 over sorted values, each with a leading 0: the sum over
    samples [lo, hi) of anything is two gathers."""

    def __init__(self, xs, ws):
        self.xs = xs
        w64, x64 = ws.double(), xs.double()
        self.w = F.pad(w64.cumsum(1), (1, 0))
        self.wx = F.pad((w64 * x64).cumsum(1), (1, 0))
        self.wxx = F.pad((w64 * x64 * x64).cumsum(1), (1, 0))

    @staticmethod
    def between(prefix, lo, hi):
        return prefix.gather(1, hi) - prefix.gather(1, lo)

    def cost(self, lo, hi, c):
        """sum over [lo, hi) of w (x - c)^2, per entry of the index tensors (c float64)."""
        sw, swx, swxx = (self.between(p, lo, hi) for p in (self.w, self.wx, self.wxx))
        return (swxx - 2 * c * swx + c * c * sw).clamp(min=0)


def _lloyd_step(sums, c):
    """Assign by midpoints, then move each centroid to its cluster's weighted mean (kept if empty)."""
    xs = sums.xs
    n = xs.shape[1]
    lo, hi = _cluster_bounds(xs, c)
    sw, swx = sums.between(sums.w, lo, hi), sums.between(sums.wx, lo, hi)
    empty = sw <= 0
    mean = (swx / torch.where(empty, torch.ones_like(sw), sw)).float()
    # the weighted mean lies within the cluster's range; clamping guards against rounding in the float64
    # differences when a cluster's weight is tiny next to the running sums
    first = xs.gather(1, lo.clamp(max=n - 1))
    last = xs.gather(1, (hi - 1).clamp(min=0))
    mean = torch.minimum(torch.maximum(mean, first), last)
    return torch.where(empty, c, mean), hi[:, :-1], empty  # hi[:, :-1]: first sample of clusters 1..k-1


def _reseed_empty(xs, ws, c, empty, can_reseed) -> torch.Tensor:
    """Moves one empty centroid per problem onto the sample with the largest weighted error. Moving an
    empty centroid can only shorten distances, so the objective does not increase."""
    todo = empty.any(1) & can_reseed
    reseeded = torch.zeros_like(todo)
    if not bool(todo.any()):
        return reseeded
    idx = todo.nonzero().squeeze(1)
    xs_i, ws_i = xs[idx], ws[idx]
    err = ws_i * (xs_i - _nearest_centroid(xs_i, c[idx])).square()
    best_err, best = err.max(1)
    useful = best_err > 0
    can_reseed[idx[~useful]] = False  # nothing left to split: fewer distinct values than centroids
    if not bool(useful.any()):
        return reseeded
    slot = empty[idx].float().argmax(1)  # first empty cluster
    rows = idx[useful]
    c[rows, slot[useful]] = xs_i.gather(1, best.unsqueeze(1)).squeeze(1)[useful]
    reseeded[rows] = True
    return reseeded


def _nearest_centroid(xs, c):
    """The centroid of ``c`` [B, k] (any order) nearest to each sample of ``xs`` [B, n]."""
    c_sorted = c.sort(dim=1).values
    mids = (c_sorted[:, 1:] + c_sorted[:, :-1]) * 0.5
    return c_sorted.gather(1, torch.searchsorted(mids.contiguous(), xs, right=True))


def _sorted_objective(xs, ws, c):
    return (ws.double() * (xs - _nearest_centroid(xs, c)).double().square()).sum(1)


def _quantile_init(xs, k):
    """Unweighted quantiles of the values: the naive start the paper's ablation compares against."""
    n = xs.shape[1]
    pos = ((torch.arange(k, device=xs.device, dtype=torch.float64) + 0.5) / k * n).long().clamp(max=n - 1)
    return xs[:, pos]


def _sample_by_weight(sums, m, gen):
    """``m`` sample indices per problem drawn with probability ~ w: where the cumulative weight first exceeds
    a uniform draw."""
    B, n = sums.xs.shape
    u = torch.rand(B, m, generator=gen, device=sums.xs.device, dtype=torch.float64) * sums.w[:, -1:]
    return torch.searchsorted(sums.w[:, 1:].contiguous(), u.contiguous(), right=True).clamp(max=n - 1)


def _cluster_bounds(xs, c):
    """[lo, hi) sample ranges of the clusters of sorted centroids ``c`` [B, j]."""
    n = xs.shape[1]
    mids = ((c[:, 1:] + c[:, :-1]) * 0.5).contiguous()
    bounds = torch.searchsorted(xs, mids)
    return F.pad(bounds, (1, 0), value=0), F.pad(bounds, (0, 1), value=n)


def _sample_by_potential(sums, c, trials, gen):
    """``trials`` samples per problem drawn with probability ~ w * D(x)^2, D = distance to the nearest of
    the sorted centroids ``c``: pick a cluster by its potential, then bisect inside it on the cumulative
    potential. O(k + log n) per draw, no pass over the samples."""
    xs = sums.xs
    B, n = xs.shape
    lo, hi = _cluster_bounds(xs, c)
    c64 = c.double()
    pot = sums.cost(lo, hi, c64)  # [B, j]
    cum = pot.cumsum(1)
    total = cum[:, -1:]
    u = torch.rand(B, trials, generator=gen, device=xs.device, dtype=torch.float64) * total
    t = torch.searchsorted(cum.contiguous(), u.contiguous(), right=True).clamp(max=c.shape[1] - 1)
    r = u - (cum.gather(1, t) - pot.gather(1, t))  # potential left to cover inside cluster t
    start, b, ct = lo.gather(1, t), hi.gather(1, t), c64.gather(1, t)
    a = start + 1
    for _ in range(max(1, math.ceil(math.log2(n + 1)))):  # smallest e in [a, b] with cost(start, e) > r
        m = (a + b) // 2
        above = sums.cost(start, m.clamp(max=n), ct) > r
        b = torch.where(above & (a < b), m, b)
        a = torch.where(~above & (a < b), m + 1, a)
    idx = (b - 1).clamp(0, n - 1)
    # problems with zero potential (every sample already a centroid): draw by weight instead
    flat = (total <= 0).expand_as(idx)
    if bool(flat.any()):
        idx = torch.where(flat, _sample_by_weight(sums, trials, gen), idx)
    return xs.gather(1, idx)


def _gain(sums, c, y):
    """Decrease of the weighted potential if candidates ``y`` [B, T] joined the sorted centroids ``c``:
    only samples between the midpoints to y's neighbours move, and for them
    w (x - c_old)^2 - w (x - y)^2 = w (c_old - y)(c_old + y - 2x)."""
    xs = sums.xs
    n, j = xs.shape[1], c.shape[1]
    pos = torch.searchsorted(c.contiguous(), y.contiguous())
    left = c.gather(1, (pos - 1).clamp(min=0))
    right = c.gather(1, pos.clamp(max=j - 1))
    left = torch.where(pos == 0, right, left)
    right = torch.where(pos == j, left, right)
    i1 = torch.where(pos == 0, torch.zeros_like(pos), torch.searchsorted(xs, ((left + y) * 0.5).contiguous()))
    i2 = torch.where(pos == j, torch.full_like(pos, n), torch.searchsorted(xs, ((y + right) * 0.5).contiguous()))
    im = torch.searchsorted(xs, ((left + right) * 0.5).contiguous()).clamp(min=i1)
    im = torch.minimum(im, i2)
    y64, l64, r64 = y.double(), left.double(), right.double()
    b = _PrefixSums.between
    gain_l = (l64 - y64) * ((l64 + y64) * b(sums.w, i1, im) - 2 * b(sums.wx, i1, im))
    gain_r = (r64 - y64) * ((r64 + y64) * b(sums.w, im, i2) - 2 * b(sums.wx, im, i2))
    return gain_l + gain_r


def _kmeans_pp(sums, k, gen, local_trials):
    """Weighted k-means++ (greedy with ``local_trials`` candidates per step), on prefix sums only."""
    xs = sums.xs
    c = xs.gather(1, _sample_by_weight(sums, 1, gen))
    for _ in range(1, k):
        cand = _sample_by_potential(sums, c, local_trials, gen)
        if local_trials > 1:
            best = _gain(sums, c, cand).argmax(1, keepdim=True)
            cand = cand.gather(1, best)
        c = torch.cat([c, cand[:, :1]], 1).sort(dim=1).values
    return c
