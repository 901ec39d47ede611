"""LUT kernels behind one dispatch function each.

``backend=None`` picks Triton for CUDA tensors when Triton imports, and the PyTorch reference otherwise.
``backend="triton"`` forces Triton (tests use it on CPU under ``TRITON_INTERPRET=1``); ``backend="torch"``
forces the reference. No global backend state: the choice is per call.
"""
from __future__ import annotations

from .packing import SUPPORTED_BITS, check_bits, group_size, pack_codes, packed_len, unpack_codes
from .reference import assign_block_ref, dequant_ref, lut_grad_from_io_ref, lut_grad_ref, lut_matmul_ref
from .dispatch import (lut_assign_block, lut_dequant, lut_dequant_indexed, lut_flat_index, lut_grad,
                       lut_grad_from_io, lut_grad_from_io_indexed, lut_matmul, triton_available)

__all__ = [
    "SUPPORTED_BITS", "check_bits", "group_size", "pack_codes", "packed_len", "unpack_codes",
    "dequant_ref", "lut_grad_ref", "lut_grad_from_io_ref", "lut_matmul_ref", "assign_block_ref", "lut_assign_block",
    "lut_dequant", "lut_grad", "lut_grad_from_io", "lut_matmul", "triton_available",
    "lut_flat_index", "lut_dequant_indexed", "lut_grad_from_io_indexed",
]
