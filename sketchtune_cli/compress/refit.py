"""LUT refit (after code assignment): with the codes fixed, the LUT values that minimise the layer's output
error are a small least-squares problem per row.

For one row ``w [cols]`` with codes ``c`` and ``q_j = lut[g(j), c_j]``, the output error over the
calibration inputs is ``(w - q)^T H (w - q)``. Writing ``q = A l`` with ``A [cols, G*k]`` the one-hot map
from columns to their (group, code) slot, the minimiser is ``l = (A^T H A)^-1 A^T H w``: a ``G*k``-sized
solve per row. k-means fitted the LUTs before the error-compensated codes existed; given the codes, this
refit lowers (never raises) the quadratic objective it is handed (the sketcher passes a damped H shrunk
toward its diagonal).

Cost: ``A^T H`` for a chunk of rows is one sparse-times-dense product (A has one nonzero per column and
row), ``rows * cols^2`` adds per layer (``product="sparse"``). ``product="dense"`` forms it as dense
matrix products instead, one per row-group: a group's slots only touch that group's columns, so
``A^T H = [onehot_g^T H[group g rows, :]]_g``, ``2 * 2^b * rows * cols^2`` flops in GEMMs (G times fewer than
one one-hot matmul over all slots). On this CPU the sparse form is as fast or faster (a dense one-hot
matmul and a Cholesky form ``(L^T A)^T (L^T A)`` measured slower: benchmarks/compress_profile.md); a GPU
runs the GEMMs at its dense rate while the sparse product streams H from memory per nonzero, so the
sketcher uses the dense form on CUDA (``compress.refit_product: auto``; its speed there is predicted by
the cost model, not yet measured). Both give the same normal equations to float rounding
(tests/compress/test_refit.py). Rows go in chunks that bound the temporary memory.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

# Relative ridge on A^T H A, toward the current LUT: keeps codes that no column uses (zero rows of A^T H A)
# at their k-means value and the solve well-posed; small enough not to bias used slots measurably.
_RIDGE = 1e-6
_CHUNK_BYTES = 256 * 2 ** 20


PRODUCTS = ("sparse", "dense")


def refit_luts(weights: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, lut: torch.Tensor,
               Hw: torch.Tensor | None = None, product: str = "sparse") -> torch.Tensor:
    """Least-squares LUT ``[rows, G, k]`` (float32) for fixed ``codes [rows, cols]`` (original column order),
    under the Hessian ``H [cols, cols]`` (positive definite: pass it damped). ``lut`` is the starting LUT,
    kept for codes that no column uses. ``Hw = weights @ H`` does not depend on the codes: a caller that
    refits the same weights round after round passes it (:func:`weighted_rows`) instead of paying a dense
    product per round. ``product``: how ``A^T H`` is formed, ``"sparse"`` or ``"dense"`` (module docstring)."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown refit product {product!r}: use one of {PRODUCTS}")
    rows, cols = weights.shape
    groups, k = lut.shape[1], lut.shape[2]
    H = H.to(weights.device, torch.float32)
    if Hw is None:
        Hw = weighted_rows(weights, H)
    chunk = max(1, min(rows, _CHUNK_BYTES // (4 * groups * k * cols)))
    out = torch.empty(rows, groups, k, dtype=torch.float32, device=weights.device)
    for r0 in range(0, rows, chunk):
        r1 = min(r0 + chunk, rows)
        out[r0:r1] = _refit_rows(Hw[r0:r1], H, codes[r0:r1], lut[r0:r1].float(), product)
    return out


def weighted_rows(weights: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``weights @ H`` in float32 (H symmetric): the right-hand side ``A^T H w`` of every round is a
    scatter of it into the LUT slots."""
    return weights.float() @ H.to(weights.device, torch.float32)


def _refit_rows(Hw: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, lut: torch.Tensor,
                product: str = "sparse") -> torch.Tensor:
    R, cols = Hw.shape
    groups, k = lut.shape[1], lut.shape[2]
    slots = groups * k  # G * k LUT values per row
    slot = _slots(codes, groups, k)
    if product == "dense":
        AtH = _grouped_one_hot_product(codes, groups, k, H)
    else:
        AtH = (_one_hot_transposed(slot, slots) @ H).view(R, slots, cols)
    M = torch.zeros(R, slots, slots, device=Hw.device).scatter_add_(2, slot.unsqueeze(1).expand(R, slots, cols), AtH)
    del AtH
    rhs = torch.zeros(R, slots, device=Hw.device).scatter_add_(1, slot, Hw)  # A^T (H w)
    return _solve(M, rhs, lut)


def _grouped_one_hot_product(codes: torch.Tensor, groups: int, k: int, H: torch.Tensor) -> torch.Tensor:
    """``A^T H`` as ``[R, G*k, cols]`` by dense products: group g's slots are the one-hot of its codes
    ``[R*k, n]`` times H's rows of that group ``[n, cols]`` (exact one-hot in float32, so the same sums as
    the sparse product up to their order)."""
    R, cols = codes.shape
    n = cols // groups
    out = torch.empty(R, groups, k, cols, device=H.device)
    for g in range(groups):
        one_hot = F.one_hot(codes[:, g * n:(g + 1) * n].long(), k).transpose(1, 2).to(H.dtype)  # [R, k, n]
        out[:, g] = (one_hot.reshape(R * k, n) @ H[g * n:(g + 1) * n]).view(R, k, cols)
    return out.view(R, groups * k, cols)


def _one_hot_transposed(slot: torch.Tensor, slots: int) -> torch.Tensor:
    """``A^T`` for all ``R`` rows stacked, ``[R * slots, cols]`` in CSR: row ``r * slots + s`` has a 1 in each
    column ``j`` with ``slot[r, j] == s``. Built directly (a stable sort of each row's slots gives the column
    indices in CSR order): going through COO cost as much as the product itself (benchmarks/compress_profile.md)."""
    R, cols = slot.shape
    columns = torch.sort(slot, dim=1, stable=True).indices
    counts = torch.zeros(R, slots, dtype=torch.long, device=slot.device).scatter_add_(1, slot, torch.ones_like(slot))
    crow = torch.zeros(R * slots + 1, dtype=torch.long, device=slot.device)
    torch.cumsum(counts.view(-1), 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is all we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, columns.reshape(-1), torch.ones(R * cols, device=slot.device),
                                       (R * slots, cols), check_invariants=False)


def _solve(M: torch.Tensor, rhs: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``l = M^-1 rhs`` per row with the ridge toward the current ``lut``; rows whose system fails keep it."""
    R, slots = rhs.shape
    diag = M.diagonal(dim1=1, dim2=2)
    ridge = _RIDGE * diag.mean(1, keepdim=True).clamp_min(1e-30)  # [R, 1]
    diag.add_(ridge)
    rhs = rhs + ridge * lut.reshape(R, slots)
    L, info = torch.linalg.cholesky_ex(M)
    sol = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
    # A row whose system is numerically indefinite keeps its LUT (never make a row worse than k-means).
    ok = (info == 0) & torch.isfinite(sol).all(1)
    return torch.where(ok.unsqueeze(1), sol, lut.reshape(R, slots)).view_as(lut)


def refit_luts_unweighted(weights: torch.Tensor, codes: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """The refit with ``H = I`` (plain least squares on the weights, no calibration data): each LUT value
    becomes the mean of the weights coded to it, a code that no weight uses keeps its value. Used by the
    ``refit_weighting: none`` ablation."""
    rows, cols = weights.shape
    groups, k = lut.shape[1], lut.shape[2]
    slot = _slots(codes, groups, k)
    total = torch.zeros(rows, groups * k, device=weights.device).scatter_add_(1, slot, weights.float())
    count = torch.zeros(rows, groups * k, device=weights.device).scatter_add_(1, slot, torch.ones(rows, cols, device=weights.device))
    mean = total / count.clamp_min(1)
    return torch.where(count > 0, mean, lut.reshape(rows, -1).float()).view(rows, groups, k)


def _slots(codes: torch.Tensor, groups: int, k: int) -> torch.Tensor:
    """Slot of each weight within its row's LUT, ``group * k + code``: ``[rows, cols]``."""
    cols = codes.shape[-1]
    return (torch.arange(cols, device=codes.device) // (cols // groups)) * k + codes.long()


def sort_luts(lut: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-sorts each LUT ascending (a refit can swap neighbours) and renumbers ``codes [rows, G, n]`` so
    ``lut[codes]`` is unchanged."""
    lut_sorted, order = lut.sort(dim=-1)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return lut_sorted, rank.gather(-1, codes.long())
