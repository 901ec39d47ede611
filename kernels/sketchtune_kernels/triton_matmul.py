"""Fused LUT matmul: ``y = x @ W_hat^T`` without ever writing ``W_hat``.

Each program owns a (token block, row block) tile of ``y`` and walks the input features in ``BLOCK_K``
steps: it loads the packed codes of the ``W`` tile, unpacks them, gathers the LUT values by pointer
arithmetic, and feeds the tile to ``tl.dot`` with fp32 accumulation. Decode (1-16 tokens) has too few
(token, row) tiles to fill a GPU, so the K dimension is split across programs; the fp32 partials are then
summed by a plain (deterministic) ``torch.sum``. For thousands of tokens dequantise once and use cuBLAS.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .packing import group_size
from .triton_common import (block_range, check_codes, check_out, dot, dot_precision, dot_upcast, interpreting,
                            load_codes, scratch, split_range)


@triton.jit
def _lut_matmul_kernel(
    x_ptr, lut_ptr, codes_ptr, y_ptr,
    tokens, rows, cols, n, nbytes, cols_per_split,
    s_xt, s_xk, s_lr, s_lg, s_ll, s_cr, s_cg, s_cb, s_ys, s_yt, s_yr,
    BITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_t, pid_r, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t, tmask = block_range(pid_t, tokens, BLOCK_T)
    r, rmask = block_range(pid_r, rows, BLOCK_R)
    r64 = r.to(tl.int64)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    k_start, k_end = split_range(pid_s, cols_per_split, cols)
    for k0 in range(k_start, k_end, BLOCK_K):
        c = k0 + tl.arange(0, BLOCK_K)
        cmask = c < k_end
        xt = tl.load(x_ptr + t.to(tl.int64)[:, None] * s_xt + c[None, :] * s_xk,
                     mask=tmask[:, None] & cmask[None, :], other=0.0)
        # W tile laid out transposed, [BLOCK_K, BLOCK_R], so it feeds tl.dot directly.
        wmask = cmask[:, None] & rmask[None, :]
        grp = (c // n)[:, None]
        code = load_codes(codes_ptr, r[None, :], grp, (c % n)[:, None], s_cr, s_cg, s_cb, nbytes, wmask, BITS)
        w = tl.load(lut_ptr + r64 * s_lr + grp * s_lg + code * s_ll, mask=wmask, other=0.0)
        acc = dot(xt, w.to(xt.dtype), acc, PREC, UPCAST)
    y = y_ptr + pid_s * s_ys + t.to(tl.int64)[:, None] * s_yt + r64 * s_yr
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=tmask[:, None] & rmask[None, :])


# Decode (1-16 tokens) on a GPU: (BLOCK_R, BLOCK_K, num_warps, programs per SM that the K split aims for).
# Swept by scripts/sweep_matmul_blocks.py on an H200 (25 configurations, then the best 7 twice): none beat this
# first choice by more than 1.04-1.14x, and the winner changed between passes, so it stays; every one took
# 3.2-28x a dense bf16 matmul. The gap is the kernel's per-element code unpack and LUT gather, not its blocks.
GPU_DECODE = (64, 64, 4, 2)


def _decode_launch(tokens: int, rows: int, cols: int, sms: int, cfg=None) -> tuple[int, int, int, int, int]:
    """(BLOCK_T, BLOCK_R, BLOCK_K, splits, num_warps) for ``tokens <= 16`` from ``cfg`` (default GPU_DECODE),
    K split to aim at ``per_sm * sms`` programs."""
    block_r, block_k, warps, per_sm = cfg or GPU_DECODE
    return 16, block_r, block_k, _splits(tokens, rows, cols, 16, block_r, block_k, per_sm * sms), warps


def _splits(tokens: int, rows: int, cols: int, block_t: int, block_r: int, block_k: int, target: int) -> int:
    """How many ways to split K: until about ``target`` programs run, at least 4 BLOCK_K steps per split."""
    programs = triton.cdiv(tokens, block_t) * triton.cdiv(rows, block_r)
    return max(1, min(triton.cdiv(cols, 4 * block_k), triton.cdiv(target, programs)))


def _config(tokens: int, rows: int, cols: int, device) -> tuple[int, int, int, int, int]:
    """(BLOCK_T, BLOCK_R, BLOCK_K, splits, num_warps). Fixed, small configs; the interpreter gets big blocks."""
    if interpreting() or device.type != "cuda":
        return 16, 64, 64, 1, 4
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if tokens <= 16:
        return _decode_launch(tokens, rows, cols, sms)
    block_t = 32 if tokens <= 32 else 64
    return block_t, 64, 64, _splits(tokens, rows, cols, block_t, 64, 64, 2 * sms), 4


def lut_matmul_triton(x: torch.Tensor, lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int,
                      out: torch.Tensor | None = None, splits: int | None = None) -> torch.Tensor:
    """``x @ W_hat^T``: ``x`` ``[..., in_features]`` (any strides; fp32/bf16/fp16) -> ``[..., rows]`` in
    x's dtype. The LUT is cast to x's dtype per tile, like the reference's ``W_hat.to(x.dtype)``."""
    rows, groups, _ = lut.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the layer has {in_features}")
    n = group_size(in_features, groups)
    nbytes = check_codes(codes, rows, groups, n, bits)
    x2 = x.reshape(-1, in_features)  # a view whenever strides allow; strides go to the kernel as they are
    tokens = x2.shape[0]
    out = check_out(out, (*x.shape[:-1], rows), x.dtype, x.device)
    if out.numel() == 0:
        return out
    if in_features == 0:
        return out.zero_()
    block_t, block_r, block_k, auto_splits, warps = _config(tokens, rows, in_features, x.device)
    per_split = triton.cdiv(triton.cdiv(in_features, splits or auto_splits), block_k) * block_k
    n_splits = triton.cdiv(in_features, per_split)
    out2 = out.view(tokens, rows) if out.is_contiguous() else None
    y = out2.unsqueeze(0) if n_splits == 1 and out2 is not None else scratch(
        (n_splits, tokens, rows), torch.float32 if n_splits > 1 else x.dtype, x.device)
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(rows, block_r), n_splits)
    _lut_matmul_kernel[grid](
        x2, lut, codes, y, tokens, rows, in_features, n, nbytes, per_split,
        *x2.stride(), *lut.stride(), *codes.stride(), *y.stride(),
        BITS=bits, BLOCK_T=block_t, BLOCK_R=block_r, BLOCK_K=block_k,
        PREC=dot_precision(x.dtype), UPCAST=dot_upcast(x.dtype), num_warps=warps,
    )
    if out2 is None or n_splits > 1:
        out.copy_(y.sum(0).view(out.shape) if n_splits > 1 else y[0].view(out.shape))
    return out
