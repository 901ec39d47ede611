"""Pieces shared by the Triton kernels: in-register code unpacking and launch helpers.

Codes arrive packed as in :mod:`packing` (an MSB-first bitstream per (row, group), padded to a byte).
Each kernel unpacks them itself, element by element, so any group size works (odd ones too) and no
unpacked copy of the codes ever exists in memory.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (CPU tests): there, few big programs are much faster than many
    small ones, so wrappers pick larger blocks and no split."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def scratch(shape, dtype, device) -> torch.Tensor:
    """Temporary buffer the kernels fully overwrite. ``SKETCHTUNE_KERNEL_POISON=1`` fills it with NaN so
    tests catch any element a kernel forgets to write."""
    if os.environ.get("SKETCHTUNE_KERNEL_POISON", "0") not in ("", "0") and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's own TF32 switch so the fused kernels match ``torch.matmul`` semantics;
    for fp16/bf16 the setting is ignored by Triton and the default is passed."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def check_out(out: torch.Tensor | None, shape, dtype, device) -> torch.Tensor:
    """Validate a caller-provided output or allocate one."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != torch.device(device):
        raise ValueError(
            f"out must be {tuple(shape)} {dtype} on {device}, got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    return out


def check_codes(codes: torch.Tensor, rows: int, groups: int, group_size: int, bits: int) -> int:
    """Return bytes per (row, group) after checking the packed codes' shape against the layer."""
    from .packing import check_bits, packed_len

    check_bits(bits)
    nbytes = packed_len(group_size, bits)
    if codes.dtype != torch.uint8 or tuple(codes.shape) != (rows, groups, nbytes):
        raise ValueError(
            f"codes must be uint8 {(rows, groups, nbytes)} for {bits}-bit groups of {group_size}, "
            f"got {codes.dtype} {tuple(codes.shape)}"
        )
    return nbytes


@triton.jit
def block_range(pid, size, BLOCK: tl.constexpr):
    """The indices of program ``pid``'s block along a dimension of ``size``, and their in-range mask."""
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    return idx, idx < size


@triton.jit
def split_range(pid_s, per_split, size):
    """[start, end) of split ``pid_s`` of a reduction over ``size`` columns cut into ``per_split`` pieces."""
    start = pid_s * per_split
    return start, tl.minimum(start + per_split, size)


@triton.jit
def load_codes(codes_ptr, row, grp, k, s_cr, s_cg, s_cb, nbytes, mask, BITS: tl.constexpr):
    """Code of column ``k`` of group ``grp`` in ``row`` (broadcastable int tensors) from the packed bytes.

    Bit ``k*BITS`` of the group's stream starts the code. 2- and 4-bit codes never cross a byte; 3-bit codes
    may, so they read a second byte (masked at the end of the group's bytes) and shift a 16-bit window."""
    bit = k * BITS
    byte = bit // 8
    base = codes_ptr + row.to(tl.int64) * s_cr + grp * s_cg
    b0 = tl.load(base + byte * s_cb, mask=mask, other=0).to(tl.int32)
    if BITS == 3:
        b1 = tl.load(base + (byte + 1) * s_cb, mask=mask & (byte + 1 < nbytes), other=0).to(tl.int32)
        code = (((b0 << 8) | b1) >> (13 - bit % 8)) & 7
    else:
        code = (b0 >> (8 - BITS - bit % 8)) & ((1 << BITS) - 1)
    return code


def dot_upcast(dtype: torch.dtype) -> bool:
    """Triton 3.9's interpreter computes ``tl.dot`` on bf16 inputs wrongly (garbage of order 1e10), so
    under the interpreter bf16 tiles are widened to fp32 first. bf16 products are exact in fp32, so this
    changes only the summation order; on a GPU the tensor cores take bf16 directly."""
    return interpreting() and dtype == torch.bfloat16


@triton.jit
def dot(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation (see :func:`dot_upcast` for ``UPCAST``)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc=acc, input_precision=PREC)
