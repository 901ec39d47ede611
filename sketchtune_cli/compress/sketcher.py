"""Sketching one linear layer (docs/method.md §2 steps 1-6): LUTs by k-means (sample weights ``d_j^-p``), codes
by a GPTQ-style column loop with error compensation; then (our addition, not in the paper; docs/method.md §2 step 7)
``lut_refit_rounds`` rounds of a least-squares LUT refit for the fixed codes (:mod:`.refit`), each later
round re-assigning the codes against the refitted LUT first. The refit's objective uses H shrunk toward its
diagonal (``refit_shrinkage``): on the exact H it lowered the calibration-set error but raised held-out
perplexity at G=4 and 3 bits (benchmarks/README.md), a sign of fitting the calibration text's correlations.
With the refit carrying the Hessian weighting, unweighted k-means (p = 0, the default) measured the better
start at 4 bits (our reading: LeanQuant's p = 4 piles the centroids onto a few high-energy columns, a start
the alternating refit does not fully recover from).

Everything runs on ``W``'s device in float32. The caller (the layer pipeline) collects ``H`` with
``hessian.HessianAccumulator``, calls ``sketch_layer`` and writes ``dequantize(sketch)`` back into the model
so later layers calibrate on the sketched model.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from sketchtune_kernels import group_size, lut_assign_block, lut_dequant, pack_codes, triton_available

from ..models import torch_dtype
from ..sketch import Sketch
from . import timing
from .kmeans import weighted_kmeans_1d
from .refit import refit_luts, refit_luts_unweighted, sort_luts, weighted_rows
from .settings import CompressSettings

_MAX_DAMPING_TRIES = 10


@dataclass
class SketchStats:
    damping: float  # absolute value added to diag(H) (0 without calibration)
    damping_fraction: float  # damping / mean(diag H): settings.percdamp, or larger if Cholesky failed
    dead_columns: int  # columns with H_jj == 0 (never active in the calibration data)
    seconds: float
    kmeans_iterations: int
    kmeans_converged: bool
    relative_error: float | None  # tr(dW H dW^T) / tr(W H W^T) with the undamped H; None if not computed
    refit_rounds: int = 0  # LUT refit rounds run (fewer than lut_refit_rounds when refit_tolerance stopped them)
    refit_objectives: list[float] = field(default_factory=list)  # before round 1, then after each round run

    def as_dict(self) -> dict:
        return asdict(self)


def sketch_layer(
    W: torch.Tensor, H: torch.Tensor | None, settings: CompressSettings | None = None
) -> tuple[Sketch, SketchStats]:
    """Sketches ``W [rows, cols]`` given its input Hessian ``H [cols, cols]`` (None = identity, i.e. no
    calibration data). Returns the sketch (LUT in ``settings.lut_dtype``, unpacked uint8 codes) and stats."""
    s = settings or CompressSettings()
    start = time.perf_counter()
    rows, cols = W.shape
    groups = s.groups_per_row
    group_size(cols, groups)
    weights = W.detach().to(torch.float32).clone()
    with timing.phase("prepare"):
        prep = _prepare(weights, H, s)
        col_weight = _column_weights(prep, s.exponent, groups)
    with timing.phase("kmeans"):
        lut, km = _fit_luts(weights, col_weight, s)
    lut_store = lut.to(torch_dtype(s.lut_dtype))
    lut = lut_store.float()  # assign codes against the values that will actually be stored
    with timing.phase("codes"):
        codes = _assign_codes(weights, prep, lut, s)
    lut_store, codes, objectives = _refit_rounds(weights, H, prep, lut_store, codes, s)
    sketch = Sketch(lut_store, codes.view(rows, groups, -1).to(torch.uint8), s.bits)
    rel = None
    if H is not None:
        with timing.phase("error"):
            rel = relative_output_error(W, dequantize(sketch), H)
    stats = SketchStats(prep.damping, prep.damping_fraction, int(prep.dead_mask.sum()), time.perf_counter() - start,
                        km.iterations, km.converged, rel, max(len(objectives) - 1, 0), objectives)
    return sketch, stats


def _refit_rounds(weights: torch.Tensor, H: torch.Tensor | None, prep: "_Prepared", lut_store: torch.Tensor,
                  codes: torch.Tensor, s: CompressSettings) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Up to ``lut_refit_rounds`` rounds of (re-assign codes, refit LUT). Returns the stored LUT, the codes
    ``[rows, cols]`` and the refit objective before the first round and after each round run.

    With ``refit_tolerance > 0`` the rounds stop once one lowers the objective by less than that fraction
    (the later rounds mostly shuffle codes at the margin); a round that raised it (the code re-assignment
    minimises GPTQ's objective on the damped, unshrunk H, not this one) is undone. With 0 every round runs
    and the last one is kept, as before the tolerance existed. The objective is one dense product per
    round, a small share of it, and is always recorded in the stats (the trajectory the tolerance's
    default was chosen from)."""
    rows, groups = weights.shape[0], s.groups_per_row
    rounds = s.lut_refit_rounds if H is not None else 0
    if not rounds:
        return lut_store, codes, []
    weighted = s.refit_weighting == "hessian"
    with timing.phase("refit"):
        refit_H = _refit_hessian(H, prep.damping, s.refit_shrinkage, weights.device) if weighted else None
        Hw = weighted_rows(weights, refit_H) if weighted else None  # the same for every round
    lut = lut_store.float()
    with timing.phase("objective"):
        objectives = [_objective(weights, lut, codes, refit_H)]
    for round_ in range(rounds):
        kept = (lut_store, codes)
        if round_:  # later rounds: re-assign the codes against the refitted LUT first
            with timing.phase("codes"):
                codes = _assign_codes(weights, prep, lut, s)
        with timing.phase("refit"):
            refitted = (refit_luts(weights, refit_H, codes, lut, Hw, refit_product(s, weights.device)) if weighted
                        else refit_luts_unweighted(weights, codes, lut))
            lut, codes = sort_luts(refitted, codes.view(rows, groups, -1))
            codes = codes.view(rows, -1)
            lut_store = lut.to(torch_dtype(s.lut_dtype))
            lut = lut_store.float()
        with timing.phase("objective"):
            objectives.append(_objective(weights, lut, codes, refit_H))
        if s.refit_tolerance <= 0:
            continue
        gain = objectives[-2] - objectives[-1]
        if gain < s.refit_tolerance * objectives[-2]:
            if gain < 0:
                lut_store, codes = kept
            break
    return lut_store, codes, objectives


def refit_product(s: CompressSettings, device) -> str:
    """The refit's ``A^T H`` form: the setting, or for ``auto`` dense GEMMs on a GPU and the sparse product on
    a CPU (refit.py's docstring)."""
    if s.refit_product != "auto":
        return s.refit_product
    return "dense" if torch.device(device).type == "cuda" else "sparse"


def _objective(weights: torch.Tensor, lut: torch.Tensor, codes: torch.Tensor, H: torch.Tensor | None,
               chunk_rows: int = 1024) -> float:
    """The refit's objective ``tr((W - Q) H (W - Q)^T)`` (``H = None``: identity) for ``codes [rows, cols]``.
    One dense product: a small share of a round."""
    rows, cols = weights.shape
    groups = lut.shape[1]
    total = 0.0
    for r in range(0, rows, chunk_rows):
        c = codes[r:r + chunk_rows].view(-1, groups, cols // groups).long()
        dw = weights[r:r + chunk_rows] - lut[r:r + chunk_rows].gather(-1, c).view(-1, cols)
        total += float(((dw @ H) * dw).sum()) if H is not None else float((dw * dw).sum())
    return total


def _refit_hessian(H: torch.Tensor, damping: float, shrinkage: float, device) -> torch.Tensor:
    """The LUT refit's objective: the damped H, its off-diagonal part scaled by ``1 - shrinkage`` (the input
    correlations of a small or off-domain calibration set are the least trustworthy part of H)."""
    out = H.to(device, torch.float32).clone()
    out.diagonal().add_(damping)
    diag = out.diagonal().clone()
    out.mul_(1 - shrinkage).diagonal().copy_(diag)
    return out


def _assign_codes(weights: torch.Tensor, prep: "_Prepared", lut: torch.Tensor, s: CompressSettings) -> torch.Tensor:
    """Codes ``[rows, cols]`` for the given LUT: error-compensated (step 6) or nearest value."""
    if s.error_compensation and prep.upper is not None:
        if weights.is_cuda and triton_available():  # one kernel launch per block instead of ~6 per column
            return assign_compensated_blocks(weights, prep, lut, s.block_size)
        return _assign_compensated(weights, prep, lut, s.block_size)
    return nearest_codes(weights.view(weights.shape[0], s.groups_per_row, -1), lut).view(weights.shape[0], -1)


def dequantize(sketch: Sketch) -> torch.Tensor:
    """``W_hat [rows, cols]`` in float32, on the sketch's device, from a sketch with unpacked codes (through
    the kernels' dequant, the one implementation of ``lut[i, j // n, code[i, j]]``)."""
    rows, groups, n = sketch.codes.shape
    return lut_dequant(sketch.lut.float(), pack_codes(sketch.codes, sketch.bits), sketch.bits, groups * n)


def relative_output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor, chunk_rows: int = 1024) -> float:
    """``||W X - W_hat X||^2 / ||W X||^2 = tr(dW H dW^T) / tr(W H W^T)`` computed from ``H`` alone."""
    H = H.to(W.device, torch.float32)
    num = den = 0.0
    for r in range(0, W.shape[0], chunk_rows):
        w = W[r:r + chunk_rows].float()
        dw = w - W_hat[r:r + chunk_rows].to(w.device, torch.float32)
        num += float(((dw @ H) * dw).sum())
        den += float(((w @ H) * w).sum())
    return num / den if den > 0 else 0.0


def nearest_codes(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of the (ascending) ``lut [..., k]`` for each element of ``x [..., n]``;
    ties go to the smaller value."""
    mids = (lut[..., 1:] + lut[..., :-1]) * 0.5
    return torch.searchsorted(mids.contiguous(), x.contiguous())


@dataclass
class _Prepared:
    perm: torch.Tensor  # coding order: perm[i] = original index of the i-th coded column
    upper: torch.Tensor | None  # upper Cholesky factor of the permuted, damped H^-1 (None = identity H)
    diag: torch.Tensor  # d_j = U[j, j] in coding order
    dead_mask: torch.Tensor  # [cols] bool, original order
    damping: float
    damping_fraction: float


def _prepare(weights: torch.Tensor, H: torch.Tensor | None, s: CompressSettings) -> _Prepared:
    """Steps 1-4: dead columns, act-order permutation, damping, U = chol(H^-1)^T. Zeroes dead columns of
    ``weights`` in place."""
    cols, device = weights.shape[1], weights.device
    if H is None:
        ones = torch.ones(cols, device=device)
        return _Prepared(torch.arange(cols, device=device), None, ones, torch.zeros(cols, dtype=torch.bool, device=device),
                         0.0, 0.0)
    if H.shape != (cols, cols):
        raise ValueError(f"H has shape {tuple(H.shape)}, expected ({cols}, {cols})")
    H = H.to(device, torch.float32).clone()
    dead_mask = H.diagonal() == 0
    H.diagonal()[dead_mask] = 1.0
    weights[:, dead_mask] = 0.0
    if s.act_order:
        perm = torch.argsort(H.diagonal(), descending=True, stable=True)
        H = H[perm][:, perm]
    else:
        perm = torch.arange(cols, device=device)
    mean_diag = float(H.diagonal().mean())
    upper, damping = _inverse_cholesky_upper(H, s.percdamp * mean_diag, mean_diag)
    return _Prepared(perm, upper, upper.diagonal().clone(), dead_mask, damping, damping / mean_diag)


def _inverse_cholesky_upper(H: torch.Tensor, damping: float, mean_diag: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + damping I)^-1``; on failure retries with 10x the damping (starting
    from 1e-6 mean(diag H) when the requested damping is 0)."""
    for _ in range(_MAX_DAMPING_TRIES):
        A = H.clone()
        A.diagonal().add_(damping)
        L, info = torch.linalg.cholesky_ex(A)
        del A
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if int(info) == 0 and bool(torch.isfinite(U.diagonal()).all()):
                return U, damping
        damping = damping * 10 if damping > 0 else 1e-6 * mean_diag
    raise RuntimeError(f"Cholesky of the damped Hessian failed even with damping {damping:.3g}; "
                       "the calibration inputs may contain inf/nan")


def _column_weights(prep: _Prepared, exponent: float, groups: int) -> torch.Tensor:
    """k-means sample weight ``d_j^-p`` per ORIGINAL column, normalised to max 1 within each group (the
    raw values span many orders of magnitude). Dead columns weigh nothing: their inputs are always 0."""
    cols = prep.diag.numel()
    log_w = torch.empty(cols, device=prep.diag.device)
    log_w[prep.perm] = -exponent * prep.diag.log()
    log_w = log_w.masked_fill(prep.dead_mask, -math.inf).view(groups, -1)
    top = log_w.amax(1, keepdim=True)
    w = (log_w - torch.where(torch.isfinite(top), top, torch.zeros_like(top))).exp()
    return w.view(cols)


def _fit_luts(weights: torch.Tensor, col_weight: torch.Tensor, s: CompressSettings):
    """Step 5: one weighted k-means per (row, group), all at once. Returns (lut [rows, G, 2^b], result)."""
    rows, cols = weights.shape
    groups = s.groups_per_row
    gen = torch.Generator(device=weights.device)
    gen.manual_seed(s.seed)
    res = weighted_kmeans_1d(weights.view(rows, groups, -1), col_weight.view(1, groups, -1), 2 ** s.bits,
                             iters=s.kmeans_iters, init=s.kmeans_init, generator=gen, restarts=s.kmeans_restarts)
    return res.centroids.sort(dim=-1).values, res


def assign_compensated_blocks(weights: torch.Tensor, prep: _Prepared, lut: torch.Tensor, block_size: int,
                              backend: str | None = None) -> torch.Tensor:
    """Step 6 one block of columns at a time through ``sketchtune_kernels.lut_assign_block`` (the Triton
    kernel on CUDA: a whole block per launch), then GPTQ's lazy update of the later columns as one product.
    The same codes as :func:`_assign_compensated` up to float rounding (tests/compress/test_code_assignment.py)."""
    rows, cols = weights.shape
    groups, k = lut.shape[1], lut.shape[2]
    U = prep.upper
    Wp = weights.index_select(1, prep.perm)
    group_of = (prep.perm // (cols // groups)).to(torch.int32)
    mids = torch.full((rows, groups, k), float("inf"), device=weights.device)
    mids[..., :-1] = (lut[..., 1:] + lut[..., :-1]) * 0.5
    codes_p = torch.empty(rows, cols, dtype=torch.long, device=weights.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        block_codes, errs = lut_assign_block(Wp[:, i1:i2].contiguous(), U[i1:i2, i1:i2].contiguous(), group_of[i1:i2],
                                             lut, mids, backend=backend)
        codes_p[:, i1:i2] = block_codes
        if i2 < cols:
            Wp[:, i2:].addmm_(errs, U[i1:i2, i2:], alpha=-1.0)
    codes = torch.empty_like(codes_p)
    codes[:, prep.perm] = codes_p
    return codes


def _assign_compensated(weights: torch.Tensor, prep: _Prepared, lut: torch.Tensor, block_size: int,
                        inner_block: int = 32) -> torch.Tensor:
    """Step 6: GPTQ loop in coding order. Each column takes its row-group's nearest LUT value; the scaled
    error ``(w - q) / d`` is pushed onto the not-yet-coded columns through ``U``, lazily per block (the rest
    of the matrix once per ``block_size`` columns, the rest of the block once per ``inner_block`` columns,
    so the per-column update touches at most ``inner_block`` columns).

    The column loop is bound by per-operation dispatch, not arithmetic (benchmarks/compress_profile.md), so
    it issues four operations per column, each writing into a view prepared once per block (``unbind``),
    and no indexing inside the loop: 2.7-3.6x faster than indexing per column, with the same codes
    (tests/compress/test_code_assignment.py)."""
    rows, cols = weights.shape
    group_of = (prep.perm // (cols // lut.shape[1])).tolist()  # row-group of each column, coding order
    U = prep.upper
    Wp = weights.index_select(1, prep.perm)
    # per group, its LUT and the midpoints between neighbours: [rows, k] / [rows, k-1] views, contiguous
    lut_of = lut.transpose(0, 1).contiguous().unbind(0)
    mids_of = ((lut[..., 1:] + lut[..., :-1]) * 0.5).transpose(0, 1).contiguous().unbind(0)
    codes_t = torch.empty(cols, rows, 1, dtype=torch.long, device=weights.device)  # coding order, transposed
    q = torch.empty(rows, 1, device=weights.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        n = i2 - i1
        # The block is held transposed ([n, rows], contiguous) so each column's update touches contiguous
        # memory: the strided update was ~10x slower with 2 BLAS threads.
        W1 = Wp[:, i1:i2].t().contiguous()
        E1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        w_col, e_col = W1.unsqueeze(2).unbind(0), E1.unsqueeze(2).unbind(0)  # [rows, 1] views
        code_col = codes_t[i1:i2].unbind(0)
        diag = U1.diagonal().reshape(n, 1, 1).unbind(0)
        for s1 in range(0, n, inner_block):
            s2 = min(s1 + inner_block, n)
            W_inner, U_rows = W1[s1:s2], U1[s1:s2, s1:s2].unbind(0)
            for j in range(s1, s2):
                g = group_of[i1 + j]
                torch.searchsorted(mids_of[g], w_col[j], out=code_col[j])  # nearest value, as nearest_codes
                torch.gather(lut_of[g], 1, code_col[j], out=q)
                torch.sub(w_col[j], q, out=e_col[j]).div_(diag[j])
                # U is upper triangular: the columns before j in the inner block get zero (and are done)
                W_inner.addr_(U_rows[j - s1], E1[j], alpha=-1.0)
            if s2 < n:
                W1[s2:].addmm_(U1[s1:s2, s2:].t(), E1[s1:s2], alpha=-1.0)
        if i2 < cols:
            Wp[:, i2:].addmm_(E1.t(), U[i1:i2, i2:], alpha=-1.0)
    codes = torch.empty(rows, cols, dtype=torch.long, device=weights.device)
    codes[:, prep.perm] = codes_t.view(cols, rows).t()
    return codes
