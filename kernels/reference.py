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
    idx = unpack_codes(codes, bits, n).long()
    return torch.gather(lut, 2, idx).reshape(rows, in_features)


def lut_grad_ref(grad_w: torch.Tensor, codes: torch.Tensor, bits: int, groups_per_row: int) -> torch.Tensor:
    """Scatter-add of a weight gradient ``[rows, cols]`` over the codes: fp32 ``[rows, G, 2**bits]``.

    CPU scatter_add_ is sequential, hence deterministic; CUDA's is not (float atomics), which is why CUDA
    goes through the Triton kernel."""
    rows, cols = grad_w.shape
    n = cols // groups_per_row
    idx = unpack_codes(codes, bits, n).long()
    out = torch.zeros(rows, groups_per_row, 2**bits, dtype=torch.float32, device=grad_w.device)
    return out.scatter_add_(2, idx, grad_w.reshape(rows, groups_per_row, n).float())


def lut_matmul_ref(x: torch.Tensor, lut: torch.Tensor, codes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """``y = x @ W_hat^T`` by materialising ``W_hat`` (the reference; the fused kernel never does)."""
    w = dequant_ref(lut, codes, bits, in_features).to(x.dtype)
    return x @ w.t()
