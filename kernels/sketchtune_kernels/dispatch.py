"""One entry point per operation; picks Triton on CUDA, the PyTorch reference elsewhere.

Every function takes an optional ``out=`` tensor (right shape and dtype, any strides) that is filled
and returned; tests pass a NaN-filled one to prove each element is written.
"""
from __future__ import annotations

import torch

from .reference import (assign_block_ref, dequant_indexed_ref, dequant_ref, flat_index_ref,
                        lut_grad_from_io_indexed_ref, lut_grad_from_io_ref, lut_grad_ref, lut_matmul_ref)


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


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """Reference results land in ``out`` like the kernels' do."""
    if out is None:
        return result
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out must be {tuple(result.shape)} {result.dtype}, got {tuple(out.shape)} {out.dtype}")
    return out.copy_(result)


def lut_dequant(lut, codes, bits: int, in_features: int, *, backend: str | None = None, out=None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense ``W_hat`` ``[rows, in_features]`` in ``dtype`` (default: lut's), cast as it is written."""
    if _use_triton(lut, backend):
        from .triton_dequant import dequant_triton
        return dequant_triton(lut, codes, bits, in_features, out=out, dtype=dtype)
    return _into(out, dequant_ref(lut, codes, bits, in_features).to(dtype or lut.dtype))


def lut_grad(grad_w, codes, bits: int, groups_per_row: int, *, backend: str | None = None, out=None) -> torch.Tensor:
    """fp32 ``[rows, G, 2**bits]`` scatter-add of ``grad_w`` over the codes; deterministic on every backend."""
    if _use_triton(grad_w, backend):
        from .triton_lut_grad import lut_grad_triton
        return lut_grad_triton(grad_w, codes, bits, groups_per_row, out=out)
    return _into(out, lut_grad_ref(grad_w, codes, bits, groups_per_row))


def lut_grad_from_io(grad_y, x, codes, bits: int, groups_per_row: int, *, backend: str | None = None,
                     out=None, materialize: bool = False) -> torch.Tensor:
    """:func:`lut_grad` of ``grad_y^T x``. On Triton, ``materialize=False`` bins ``grad_y^T x`` tile by tile
    and never forms ``grad_W``; ``materialize=True`` forms it in fp32 with one GEMM (cuBLAS on CUDA, bf16/fp16
    products with fp32 accumulation and output, like the tiled kernel's) and bins that: one transient fp32
    ``grad_W`` per layer, and 2.3-2.8x faster at 2048 tokens on an H200 (benchmarks/gpu/gpu.md), which is
    why SketchedLinear trains with it; the tiled path is for layers whose fp32 ``grad_W`` will not fit."""
    if _use_triton(grad_y, backend):
        if materialize:
            return lut_grad(_weight_grad_fp32(grad_y, x), codes, bits, groups_per_row, backend="triton", out=out)
        from .triton_lut_grad import lut_grad_from_io_triton
        return lut_grad_from_io_triton(grad_y, x, codes, bits, groups_per_row, out=out)
    return _into(out, lut_grad_from_io_ref(grad_y, x, codes, bits, groups_per_row))


def _weight_grad_fp32(grad_y, x) -> torch.Tensor:
    """``grad_y^T x`` as fp32, x cast to grad_y's dtype first (as the autograd path does)."""
    gy = grad_y.reshape(-1, grad_y.shape[-1])
    gx = x.reshape(-1, x.shape[-1]).to(gy.dtype)
    if gy.is_cuda and gy.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(gy.t(), gx, out_dtype=torch.float32)  # half inputs, fp32 accumulate and output
    return gy.t().float() @ gx.float()


def lut_matmul(x, lut, codes, bits: int, in_features: int, *, backend: str | None = None, out=None) -> torch.Tensor:
    """``x @ W_hat^T`` (``[..., rows]`` in x's dtype); the Triton path never materialises ``W_hat``."""
    if _use_triton(x, backend):
        from .triton_matmul import lut_matmul_triton
        return lut_matmul_triton(x, lut, codes, bits, in_features, out=out)
    return _into(out, lut_matmul_ref(x, lut, codes, bits, in_features))


def lut_assign_block(weights, upper, group_of, lut, mids, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Error-compensated codes and scaled errors for one block of columns (compress's code assignment; see
    :func:`reference.assign_block_ref`). On a CPU the sketcher's own loop (fewer operations per column) is
    faster than this reference; on CUDA the Triton kernel does the block in one launch."""
    if _use_triton(weights, backend):
        from .triton_assign import assign_block_triton
        return assign_block_triton(weights, upper, group_of, lut, mids)
    return assign_block_ref(weights, upper, group_of, lut, mids)


# ---- cached-index entry points (the CPU path) ---------------------------------------------------------
# Where the codes are frozen (training on CPU), unpacking them on every call was ~40% of a step. These take
# the flat LUT positions computed once by ``lut_flat_index`` (4 bytes per weight) instead of the packed
# codes; they are the PyTorch reference ops minus the unpacking. CUDA needs no index: the Triton kernels
# unpack in registers.

def lut_flat_index(codes, bits: int, lut_shape: tuple[int, int, int], in_features: int) -> torch.Tensor:
    """int32 ``[rows * in_features]``: where each weight's value sits in ``lut.reshape(-1)``."""
    return flat_index_ref(codes, bits, tuple(lut_shape), in_features)


def lut_dequant_indexed(lut, flat_index, in_features: int, *, out=None) -> torch.Tensor:
    """:func:`lut_dequant` from a :func:`lut_flat_index`."""
    return _into(out, dequant_indexed_ref(lut, flat_index, in_features))


def lut_grad_from_io_indexed(grad_y, x, flat_index, lut_shape: tuple[int, int, int], *, out=None) -> torch.Tensor:
    """:func:`lut_grad_from_io` from a :func:`lut_flat_index` (fp32, deterministic: CPU index_add_ is
    sequential)."""
    return _into(out, lut_grad_from_io_indexed_ref(grad_y, x, flat_index, tuple(lut_shape)))
