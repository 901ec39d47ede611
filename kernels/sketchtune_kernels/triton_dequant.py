"""Triton dequantisation: ``W[i, j] = lut[i, j // n, code[i, j]]`` written out densely.

Used where a dense ``W_hat`` is wanted anyway (large token counts, where cuBLAS on a materialised weight
beats any fused kernel, and export). Codes are unpacked in registers; the LUT is gathered by pointer
arithmetic, so each (row, group) table stays hot in L1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .packing import group_size
from .triton_common import check_codes, check_out, interpreting, load_codes


@triton.jit
def _dequant_kernel(
    lut_ptr, codes_ptr, out_ptr,
    rows, cols, n, nbytes,
    s_lr, s_lg, s_ll, s_cr, s_cg, s_cb, s_or, s_oc,
    BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r[:, None] < rows) & (c[None, :] < cols)
    grp = (c // n)[None, :]
    code = load_codes(codes_ptr, r[:, None], grp, (c % n)[None, :], s_cr, s_cg, s_cb, nbytes, mask, BITS)
    r64 = r.to(tl.int64)[:, None]
    w = tl.load(lut_ptr + r64 * s_lr + grp * s_lg + code * s_ll, mask=mask)
    # Cast on the way out: an fp32 LUT (training) writes a bf16 W_hat directly, no fp32 copy in between.
    tl.store(out_ptr + r64 * s_or + c[None, :] * s_oc, w.to(out_ptr.dtype.element_ty), mask=mask)


# (BLOCK_R, BLOCK_C, num_warps) on a GPU, chosen by scripts/sweep_dequant_blocks.py on an H200: few rows and
# long column runs. Over Llama-3-8B's three shapes it took 0.82 ms where the first choice, (32, 128, 4), took
# 1.85 ms in the same run (benchmarks/gpu/dequant-sweep-2): 470-930 GB/s instead of 220-390.
GPU_LAUNCH = (4, 1024, 8)


def _launch() -> tuple[int, int, int]:
    return (64, 128, 4) if interpreting() else GPU_LAUNCH


def dequant_triton(lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int,
                   out: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense ``W_hat`` ``[rows, in_features]`` in ``dtype`` (default: ``lut``'s); ``out`` (any strides) is
    filled if given."""
    rows, groups, _ = lut.shape
    n = group_size(in_features, groups)
    nbytes = check_codes(codes, rows, groups, n, bits)
    out = check_out(out, (rows, in_features), dtype or lut.dtype, lut.device)
    if out.numel() == 0:
        return out
    block_r, block_c, warps = _launch()
    grid = (triton.cdiv(rows, block_r), triton.cdiv(in_features, block_c))
    _dequant_kernel[grid](
        lut, codes, out, rows, in_features, n, nbytes,
        *lut.stride(), *codes.stride(), *out.stride(),
        BITS=bits, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )
    return out
