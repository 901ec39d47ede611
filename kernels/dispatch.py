"""One entry point per operation; picks Triton on CUDA, the PyTorch reference elsewhere."""
from __future__ import annotations

import torch

from .reference import dequant_ref, lut_grad_ref, lut_matmul_ref


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _use_triton(t: torch.Tensor, backend: str | None) -> bool:
    if backend not in (None, "triton", "torch"):
        raise ValueError(f"backend must be None, 'triton' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    if backend == "triton":
        return True
    return t.is_cuda and triton_available()


def lut_dequant(lut, codes, bits: int, in_features: int, *, backend: str | None = None) -> torch.Tensor:
    if _use_triton(lut, backend):
        from .triton_dequant import dequant_triton
        return dequant_triton(lut, codes, bits, in_features)
    return dequant_ref(lut, codes, bits, in_features)


def lut_grad(grad_w, codes, bits: int, groups_per_row: int, *, backend: str | None = None) -> torch.Tensor:
    if _use_triton(grad_w, backend):
        from .triton_lut_grad import lut_grad_triton
        return lut_grad_triton(grad_w, codes, bits, groups_per_row)
    return lut_grad_ref(grad_w, codes, bits, groups_per_row)


def lut_matmul(x, lut, codes, bits: int, in_features: int, *, backend: str | None = None) -> torch.Tensor:
    if _use_triton(x, backend):
        from .triton_matmul import lut_matmul_triton
        return lut_matmul_triton(x, lut, codes, bits, in_features)
    return lut_matmul_ref(x, lut, codes, bits, in_features)
