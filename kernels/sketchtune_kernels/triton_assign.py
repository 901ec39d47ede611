"""Triton code assignment with error compensation for one block of columns (compress's GPTQ-style step).

The PyTorch loop issues ~6 operations per column; on a GPU each is a kernel launch, so a Llama-3-8B block
(~39k columns, 6 assignments) is bound by launches, not arithmetic (benchmarks/cost_model.md). Here one
launch does a whole block of columns: each program holds a tile of rows x the block's columns in
registers and walks the columns in order: nearest LUT value (a count of midpoints below the weight, so
ties go to the smaller value, as ``torch.searchsorted``), scaled error ``(w - q) / U[j, j]``, and the update
of the block's later columns by ``err * U[j, later]``. Rows are independent, so programs never talk.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import interpreting


@triton.jit
def _assign_block_kernel(
    w_ptr, u_ptr, group_ptr, lut_ptr, mids_ptr, codes_ptr, err_ptr,
    rows, n_cols,
    s_wr, s_wc, s_ur, s_uc, s_lr, s_lg, s_mr, s_mg, s_cr, s_cc, s_er, s_ec,
    K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_N)
    kk = tl.arange(0, K)
    rmask = r < rows
    cmask = c < n_cols
    r64 = r.to(tl.int64)[:, None]
    tile_mask = rmask[:, None] & cmask[None, :]
    w = tl.load(w_ptr + r64 * s_wr + c[None, :] * s_wc, mask=tile_mask, other=0.0)
    errs = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    codes = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.int32)
    for j in range(0, n_cols):
        g = tl.load(group_ptr + j)
        lut = tl.load(lut_ptr + r64 * s_lr + g * s_lg + kk[None, :], mask=rmask[:, None], other=0.0)
        # midpoints padded with +inf to K entries: the count of those below w is the nearest value's index
        mids = tl.load(mids_ptr + r64 * s_mr + g * s_mg + kk[None, :], mask=rmask[:, None], other=float("inf"))
        sel = c[None, :] == j
        wj = tl.sum(tl.where(sel, w, 0.0), axis=1)
        code = tl.sum((mids < wj[:, None]).to(tl.int32), axis=1)
        q = tl.sum(tl.where(kk[None, :] == code[:, None], lut, 0.0), axis=1)
        err = (wj - q) / tl.load(u_ptr + j * s_ur + j * s_uc)
        later = tl.load(u_ptr + j * s_ur + c * s_uc, mask=cmask & (c > j), other=0.0)
        w = w - err[:, None] * later[None, :]
        errs = tl.where(sel, err[:, None], errs)
        codes = tl.where(sel, code[:, None], codes)
    tl.store(codes_ptr + r64 * s_cr + c[None, :] * s_cc, codes, mask=tile_mask)
    tl.store(err_ptr + r64 * s_er + c[None, :] * s_ec, errs, mask=tile_mask)


def assign_block_triton(weights: torch.Tensor, upper: torch.Tensor, group_of: torch.Tensor, lut: torch.Tensor,
                        mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[rows, n]`` (int32) and scaled errors ``[rows, n]`` (float32) for one block of ``n`` columns.

    ``weights [rows, n]``: the block's columns in coding order, earlier blocks' updates applied; ``upper
    [n, n]``: the block's diagonal block of U (upper Cholesky factor of H^-1); ``group_of [n]``: each
    column's row-group; ``lut [rows, G, K]`` ascending; ``mids [rows, G, K]``: midpoints between
    neighbours, the last entry +inf. All float32 on one device."""
    rows, n = weights.shape
    k = lut.shape[-1]
    lut, mids = lut.contiguous(), mids.contiguous()  # the kernel walks the last dim with stride 1
    codes = torch.empty(rows, n, dtype=torch.int32, device=weights.device)
    errs = torch.empty(rows, n, dtype=torch.float32, device=weights.device)
    if rows == 0 or n == 0:
        return codes, errs
    block_r = 64 if interpreting() else 32
    block_n = triton.next_power_of_2(n)
    grid = (triton.cdiv(rows, block_r),)
    _assign_block_kernel[grid](
        weights, upper, group_of, lut, mids, codes, errs, rows, n,
        *weights.stride(), *upper.stride(), lut.stride(0), lut.stride(1), mids.stride(0), mids.stride(1),
        *codes.stride(), *errs.stride(),
        K=k, BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return codes, errs
