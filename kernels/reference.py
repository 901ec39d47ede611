"""Pure-PyTorch references for every kernel. They define the semantics the Triton kernels must match and
are the path used on CPU (and wherever Triton is unavailable)."""
from __future__ import annotations

import torch

from .packing import unpack_codes


def _shape(lut: torch.Tensor, in_features: int) -> tuple[int, int, int, int]:
    rows, groups, levels = lut.shape
    if in_features % groups:
        raise ValueError(f"in_features={in_features} is not divisible by groups_per_row={groups}")
    return rows, groups, levels, in_features // groups


def dequant_ref(lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """``W[i, j] = lut[i, j // n, code[i, j]]`` with ``n = in_features / G``; returns lut's dtype."""
    rows, groups, levels, n = _shape(lut, in_features)
    # Flat int32 indices + index_select: half the index memory of gather's int64 and ~40% faster on CPU,
    # where this runs on every forward.
    base = torch.arange(0, rows * groups * levels, levels, device=lut.device, dtype=torch.int32)
    idx = unpack_codes(codes, bits, n).to(torch.int32) + base.reshape(rows, groups, 1)
    return lut.reshape(-1).index_select(0, idx.reshape(-1)).reshape(rows, in_features)


def lut_grad_ref(grad_w: torch.Tensor, codes: torch.Tensor, bits: int, groups_per_row: int) -> torch.Tensor:
    """Scatter-add of a weight gradient ``[rows, cols]`` over the codes: fp32 ``[rows, G, 2**bits]``.

    CPU scatter_add_ is sequential, hence deterministic; CUDA's is not (float atomics), which is why CUDA
    goes through the Triton kernel."""
    rows, cols = grad_w.shape
    if cols % groups_per_row:
        raise ValueError(f"cols={cols} is not divisible by groups_per_row={groups_per_row}")
    n = cols // groups_per_row
    idx = unpack_codes(codes, bits, n).long()
    # fp32 for fp32/bf16/fp16; fp64 stays fp64 so float64 gradchecks of the whole path are exact.
    dtype = torch.promote_types(grad_w.dtype, torch.float32)
    out = torch.zeros(rows, groups_per_row, 2**bits, dtype=dtype, device=grad_w.device)
    return out.scatter_add_(2, idx, grad_w.reshape(rows, groups_per_row, n).to(dtype))


def lut_grad_from_io_ref(grad_y: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, bits: int,
                         groups_per_row: int) -> torch.Tensor:
    """LUT gradient from the layer's output gradient ``[..., rows]`` and input ``[..., cols]``: forms
    ``grad_W = grad_y^T x`` in fp32 (x cast to grad_y's dtype first, as the autograd path does) and bins it."""
    dtype = torch.promote_types(grad_y.dtype, torch.float32)
    gy = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
    gx = x.reshape(-1, x.shape[-1]).to(grad_y.dtype).to(dtype)
    return lut_grad_ref(gy.t() @ gx, codes, bits, groups_per_row)


def lut_matmul_ref(x: torch.Tensor, lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """``y = x @ W_hat^T`` by materialising ``W_hat`` (the reference; the fused kernel never does)."""
    w = dequant_ref(lut, codes, bits, in_features).to(x.dtype)
    return x @ w.t()
