"""Pure-PyTorch references for every kernel. They define the semantics the Triton kernels must match and
are the path used on CPU (and wherever Triton is unavailable)."""
from __future__ import annotations

import torch

from .packing import group_size, unpack_codes


def flat_index_ref(codes: torch.Tensor, bits: int, lut_shape: tuple[int, int, int], in_features: int) -> torch.Tensor:
    """int32 ``[rows * in_features]``: the position of each weight's LUT value in ``lut.reshape(-1)``.

    Flat int32 indices + index_select/index_add_: half the index memory of gather's int64 and ~40% faster
    on CPU. Codes are frozen during training, so callers may compute this once and pass it to the
    ``*_indexed`` functions (unpacking on every call was ~40% of a CPU training step)."""
    rows, groups, levels = lut_shape
    n = group_size(in_features, groups)
    base = torch.arange(0, rows * groups * levels, levels, device=codes.device, dtype=torch.int32)
    return (unpack_codes(codes, bits, n).to(torch.int32) + base.reshape(rows, groups, 1)).reshape(-1)


def dequant_indexed_ref(lut: torch.Tensor, flat_index: torch.Tensor, in_features: int) -> torch.Tensor:
    """``W_hat [rows, in_features]`` in lut's dtype from precomputed flat positions (:func:`flat_index_ref`)."""
    return lut.reshape(-1).index_select(0, flat_index).reshape(lut.shape[0], in_features)


def dequant_ref(lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """``W[i, j] = lut[i, j // n, code[i, j]]`` with ``n = in_features / G``; returns lut's dtype."""
    return dequant_indexed_ref(lut, flat_index_ref(codes, bits, tuple(lut.shape), in_features), in_features)


def lut_grad_ref(grad_w: torch.Tensor, codes: torch.Tensor, bits: int, groups_per_row: int) -> torch.Tensor:
    """Scatter-add of a weight gradient ``[rows, cols]`` over the codes: fp32 ``[rows, G, 2**bits]``.

    CPU scatter_add_ is sequential, hence deterministic; CUDA's is not (float atomics), which is why CUDA
    goes through the Triton kernel."""
    rows, cols = grad_w.shape
    n = group_size(cols, groups_per_row)
    idx = unpack_codes(codes, bits, n).long()
    # fp32 for fp32/bf16/fp16; fp64 stays fp64 so float64 gradchecks of the whole path are exact.
    dtype = torch.promote_types(grad_w.dtype, torch.float32)
    out = torch.zeros(rows, groups_per_row, 2**bits, dtype=dtype, device=grad_w.device)
    return out.scatter_add_(2, idx, grad_w.reshape(rows, groups_per_row, n).to(dtype))


def lut_grad_from_io_ref(grad_y: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, bits: int,
                         groups_per_row: int) -> torch.Tensor:
    """LUT gradient from the layer's output gradient ``[..., rows]`` and input ``[..., cols]``: forms
    ``grad_W = grad_y^T x`` in fp32 (x cast to grad_y's dtype first, as the autograd path does) and bins it."""
    return lut_grad_ref(_weight_grad(grad_y, x), codes, bits, groups_per_row)


def lut_grad_from_io_indexed_ref(grad_y: torch.Tensor, x: torch.Tensor, flat_index: torch.Tensor,
                                 lut_shape: tuple[int, int, int]) -> torch.Tensor:
    """:func:`lut_grad_from_io_ref` over precomputed flat positions (:func:`flat_index_ref`): the same
    fp32 sums (CPU index_add_ is sequential, hence deterministic), without unpacking the codes."""
    grad_w = _weight_grad(grad_y, x)
    out = torch.zeros(lut_shape[0] * lut_shape[1] * lut_shape[2], dtype=grad_w.dtype, device=grad_w.device)
    return out.index_add_(0, flat_index, grad_w.reshape(-1)).reshape(lut_shape)


def _weight_grad(grad_y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad_W = grad_y^T x`` in fp32 (fp64 stays fp64), x cast to grad_y's dtype first."""
    dtype = torch.promote_types(grad_y.dtype, torch.float32)
    gy = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
    gx = x.reshape(-1, x.shape[-1]).to(grad_y.dtype).to(dtype)
    return gy.t() @ gx


def lut_matmul_ref(x: torch.Tensor, lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """``y = x @ W_hat^T`` by materialising ``W_hat`` (the reference; the fused kernel never does)."""
    w = dequant_ref(lut, codes, bits, in_features).to(x.dtype)
    return x @ w.t()


def assign_block_ref(weights: torch.Tensor, upper: torch.Tensor, group_of: torch.Tensor, lut: torch.Tensor,
                     mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Error-compensated code assignment of one block of columns, column by column (the math of
    :func:`triton_assign.assign_block_triton`, written plainly): each column takes its row-group's nearest
    LUT value (ties to the smaller), the error scaled by ``upper[j, j]`` moves the block's later columns by
    ``err * upper[j, later]``. Returns (codes int32, scaled errors float32), both ``[rows, n]``."""
    w = weights.float().clone()
    rows, n = w.shape
    codes = torch.empty(rows, n, dtype=torch.int32, device=w.device)
    errs = torch.empty(rows, n, dtype=torch.float32, device=w.device)
    for j in range(n):
        g = int(group_of[j])
        code = (mids[:, g] < w[:, j:j + 1]).sum(1)  # midpoints below the weight (the last one is +inf)
        err = (w[:, j] - lut[:, g].gather(1, code.unsqueeze(1)).squeeze(1)) / upper[j, j]
        w[:, j + 1:] -= err.unsqueeze(1) * upper[j, j + 1:].unsqueeze(0)
        codes[:, j], errs[:, j] = code.to(torch.int32), err
    return codes, errs
