"""Deterministic Triton LUT gradient: ``grad_lut[i, g, l] = sum of grad_W[i, j]`` over the columns ``j`` of
group ``g`` whose code is ``l``.

The authors' kernel scatters with float atomics, so two runs differ in the last bits. Here no atomics are
used: one program owns the output bins of a (row block, group, column split) and reduces its column tiles
in a fixed order with one-hot masks per code, in fp32. Splits (more parallelism for few rows) write
separate partial bins that are summed afterwards by an ordinary, deterministic ``torch.sum``.

:func:`lut_grad_from_io_triton` fuses the weight gradient: it forms ``grad_W`` tiles as
``grad_y^T @ x`` with ``tl.dot`` and bins them in registers, so the dense ``[rows, cols]`` fp32 gradient
never exists in memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .packing import group_size
from .triton_common import (block_range, check_codes, check_out, dot, dot_precision, dot_upcast, interpreting,
                            load_codes, scratch, split_range)


@triton.jit
def _bin_tile(acc, vals, code, LEVELS: tl.constexpr):
    """Add each row's values into its per-code bins: ``acc[r, l] += sum_c vals[r, c] * (code[r, c] == l)``.

    One masked row-sum per code keeps every tensor 2-D; a 3-D one-hot ``[R, C, LEVELS]`` would not fit in
    registers for useful tile sizes. The order of the sums is fixed, so the result is too."""
    levels = tl.arange(0, LEVELS)
    for level in tl.static_range(LEVELS):
        sums = tl.sum(tl.where(code == level, vals, 0.0), axis=1)
        acc += tl.where(levels[None, :] == level, sums[:, None], 0.0)
    return acc


@triton.jit
def _store_bins(out_ptr, acc, r, rmask, pid_g, pid_s, s_os, s_or, s_og, s_ol, LEVELS: tl.constexpr):
    levels = tl.arange(0, LEVELS)
    ptr = out_ptr + pid_s * s_os + r.to(tl.int64)[:, None] * s_or + pid_g * s_og + levels[None, :] * s_ol
    tl.store(ptr, acc, mask=rmask[:, None])


@triton.jit
def _grad_tile_from_io(gy_ptr, x_ptr, r, rmask, col, kmask, tokens, s_yt, s_yr, s_xt, s_xc,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
                       PREC: tl.constexpr, UPCAST: tl.constexpr):
    """The ``[BLOCK_R, BLOCK_C]`` tile of ``grad_W = grad_y^T @ x``, accumulated in fp32 over the tokens."""
    gw = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for t0 in range(0, tokens, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < tokens
        gy = tl.load(gy_ptr + t.to(tl.int64)[None, :] * s_yt + r[:, None] * s_yr,
                     mask=rmask[:, None] & tmask[None, :], other=0.0)
        xt = tl.load(x_ptr + t.to(tl.int64)[:, None] * s_xt + col[None, :] * s_xc,
                     mask=tmask[:, None] & kmask[None, :], other=0.0)
        gw = dot(gy, xt, gw, PREC, UPCAST)
    return gw


@triton.jit
def _lut_grad_kernel(
    gw_ptr, gy_ptr, x_ptr, codes_ptr, out_ptr,
    tokens, rows, n, nbytes, cols_per_split,
    s_gr, s_gc, s_yt, s_yr, s_xt, s_xc, s_cr, s_cg, s_cb, s_os, s_or, s_og, s_ol,
    BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
    FROM_IO: tl.constexpr,  # form grad_W tiles from grad_y and x (gw_ptr unused), else read them at gw_ptr
):
    pid_r, pid_g, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    LEVELS: tl.constexpr = 1 << BITS
    r, rmask = block_range(pid_r, rows, BLOCK_R)
    k_start, k_end = split_range(pid_s, cols_per_split, n)
    acc = tl.zeros([BLOCK_R, LEVELS], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_C):
        k = k0 + tl.arange(0, BLOCK_C)
        kmask = k < k_end
        mask = rmask[:, None] & kmask[None, :]
        col = pid_g * n + k
        if FROM_IO:
            g = _grad_tile_from_io(gy_ptr, x_ptr, r, rmask, col, kmask, tokens, s_yt, s_yr, s_xt, s_xc,
                                   BLOCK_R, BLOCK_C, BLOCK_T, PREC, UPCAST)
            g = tl.where(mask, g, 0.0)
        else:
            g = tl.load(gw_ptr + r.to(tl.int64)[:, None] * s_gr + col[None, :] * s_gc, mask=mask,
                        other=0.0).to(tl.float32)
        code = load_codes(codes_ptr, r[:, None], pid_g, k[None, :], s_cr, s_cg, s_cb, nbytes, mask, BITS)
        acc = _bin_tile(acc, g, code, LEVELS)
    _store_bins(out_ptr, acc, r, rmask, pid_g, pid_s, s_os, s_or, s_og, s_ol, LEVELS)


def _num_splits(rows: int, groups: int, n: int, block_r: int, block_c: int, device) -> int:
    """Column splits per group so that the grid fills the GPU (about two programs per SM)."""
    if interpreting() or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = triton.cdiv(rows, block_r) * groups
    tiles = triton.cdiv(n, block_c)
    return max(1, min(tiles, triton.cdiv(2 * sms, programs)))


def _launch_plan(out, rows, groups, n, block_r, block_c, splits=None):
    """Grid, columns per split, and where the kernel writes: straight into ``out`` when there is one
    split, else into fp32 partials ``[splits, rows, G, levels]``."""
    splits = splits or _num_splits(rows, groups, n, block_r, block_c, out.device)
    cols_per_split = triton.cdiv(triton.cdiv(n, splits), block_c) * block_c
    splits = triton.cdiv(n, cols_per_split)
    target = out.unsqueeze(0) if splits == 1 else scratch((splits, *out.shape), torch.float32, out.device)
    return (triton.cdiv(rows, block_r), groups, splits), cols_per_split, target


def _finish(target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Sum split partials into ``out`` (an ordinary fixed-order reduction, no atomics)."""
    if target.shape[0] > 1:
        out.copy_(target.sum(0))
    return out


def lut_grad_triton(grad_w: torch.Tensor, codes: torch.Tensor, bits: int, groups_per_row: int,
                    out: torch.Tensor | None = None, splits: int | None = None) -> torch.Tensor:
    """fp32 ``[rows, G, 2**bits]`` from ``grad_w`` ``[rows, cols]`` (fp32/bf16/fp16, any strides)."""
    rows, cols = grad_w.shape
    n = group_size(cols, groups_per_row)
    nbytes = check_codes(codes, rows, groups_per_row, n, bits)
    out = check_out(out, (rows, groups_per_row, 2**bits), torch.float32, grad_w.device)
    if grad_w.numel() == 0:
        return out.zero_()
    block_r, block_c = 32, 64
    grid, per_split, target = _launch_plan(out, rows, groups_per_row, n, block_r, block_c, splits)
    _lut_grad_kernel[grid](
        grad_w, grad_w, grad_w, codes, target, 0, rows, n, nbytes, per_split,
        *grad_w.stride(), 0, 0, 0, 0, *codes.stride(), *target.stride(),
        BITS=bits, BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_T=16, PREC="ieee", UPCAST=False, FROM_IO=False,
    )
    return _finish(target, out)


def lut_grad_from_io_triton(grad_y: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, bits: int,
                            groups_per_row: int, out: torch.Tensor | None = None,
                            splits: int | None = None) -> torch.Tensor:
    """fp32 LUT gradient straight from ``grad_y`` ``[..., rows]`` and ``x`` ``[..., cols]`` (same leading
    dims). ``x`` is cast to ``grad_y``'s dtype (as the autograd path does) and products accumulate in fp32."""
    rows, cols = grad_y.shape[-1], x.shape[-1]
    if grad_y.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"grad_y {tuple(grad_y.shape)} and x {tuple(x.shape)} differ in leading dims")
    n = group_size(cols, groups_per_row)
    nbytes = check_codes(codes, rows, groups_per_row, n, bits)
    gy = grad_y.reshape(-1, rows)
    x2 = x.reshape(-1, cols).to(gy.dtype)
    out = check_out(out, (rows, groups_per_row, 2**bits), torch.float32, gy.device)
    if gy.shape[0] == 0 or cols == 0:
        return out.zero_()
    block_r, block_c, block_t = (32, 64, 64) if interpreting() else (64, 64, 32)
    grid, per_split, target = _launch_plan(out, rows, groups_per_row, n, block_r, block_c, splits)
    _lut_grad_kernel[grid](
        gy, gy, x2, codes, target, gy.shape[0], rows, n, nbytes, per_split,
        0, 0, *gy.stride(), *x2.stride(), *codes.stride(), *target.stride(),
        BITS=bits, BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_T=block_t, PREC=dot_precision(gy.dtype),
        UPCAST=dot_upcast(gy.dtype), FROM_IO=True,
    )
    return _finish(target, out)
