"""SketchedLinear: a linear layer whose weight is ``lut[row, group, code]`` with frozen packed codes.

Only ``lut`` is a Parameter. ``codes`` (packed uint8) and the optional ``bias`` are buffers, so optimizers,
DDP and FSDP see exactly the sketched parameters and nothing else.
"""
from __future__ import annotations

import torch
from torch import nn

from sketchtune_kernels import (check_bits, group_size, lut_dequant, lut_dequant_indexed, lut_flat_index,
                                lut_grad_from_io, lut_grad_from_io_indexed, lut_matmul, packed_len)


def check_sketch_shape(in_features: int, bits: int, groups_per_row: int, name: str = "layer") -> None:
    check_bits(bits)
    group_size(in_features, groups_per_row, name)


class _LutLinearFn(torch.autograd.Function):
    """y = x @ W_hat^T (+ bias). Backward: grad_x = grad_y @ W_hat and grad_lut = scatter-add of
    grad_y^T x over the codes (fp32 accumulation, deterministic). W_hat is re-gathered in backward instead
    of being saved, so training holds no dense weights between forward and backward."""

    @staticmethod
    def forward(ctx, x, lut, codes, bias, bits, in_features, use_fused, flat_index=None, materialize_grad=False):
        ctx.bits, ctx.in_features, ctx.flat_index, ctx.materialize_grad = bits, in_features, flat_index, materialize_grad
        if use_fused:
            y = lut_matmul(x, lut, codes, bits, in_features)
        else:
            y = x @ _dequant(ctx, lut, codes, x.dtype).t()
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(x, lut, codes)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, lut, codes = ctx.saved_tensors
        grad_x = grad_lut = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ _dequant(ctx, lut, codes, grad_y.dtype)
        if ctx.needs_input_grad[1]:
            if ctx.flat_index is not None:  # CPU: the codes' flat LUT positions, unpacked once per layer
                grad_lut = lut_grad_from_io_indexed(grad_y, x, ctx.flat_index, lut.shape)
            else:  # CUDA: see SketchedLinear.materialize_lut_grad
                grad_lut = lut_grad_from_io(grad_y, x, codes, ctx.bits, lut.shape[1], materialize=ctx.materialize_grad)
            grad_lut = grad_lut.to(lut.dtype)
        return grad_x, grad_lut, None, None, None, None, None, None, None


def _dequant(ctx, lut, codes, dtype):
    if ctx.flat_index is not None:
        return lut_dequant_indexed(lut, ctx.flat_index, ctx.in_features).to(dtype)
    return lut_dequant(lut, codes, ctx.bits, ctx.in_features, dtype=dtype)  # cast in the kernel: no fp32 W_hat


class SketchedLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        groups_per_row: int = 4,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        check_sketch_shape(in_features, bits, groups_per_row)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.groups_per_row = bits, groups_per_row
        n = in_features // groups_per_row
        self.lut = nn.Parameter(torch.zeros(out_features, groups_per_row, 2**bits, dtype=dtype, device=device))
        self.register_buffer(
            "codes",
            torch.zeros(out_features, groups_per_row, packed_len(n, bits), dtype=torch.uint8, device=device),
        )
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None
        # Fused LUT-matmul (no W_hat in memory) pays off for few tokens on CUDA; see kernels/ benchmarks.
        self.fused_max_tokens = 16
        # CUDA training: True forms grad_W with one cuBLAS GEMM (fp32 out: one transient 235 MB grad_W at
        # 14336 x 4096) and bins it; False bins grad_y^T x tile by tile in Triton and never forms grad_W. On an
        # H200 (benchmarks/gpu/gpu.md) True took 0.36-0.43x the tiled kernel's time at 2048 tokens and a
        # fine-tuning step on two Llama-3-8B-shaped blocks 52.5 ms instead of 87.1 ms, at the same peak memory.
        self.materialize_lut_grad = True
        # CPU inference (eval, generate) keeps W_hat between calls instead of re-gathering it every token;
        # the cache is keyed on the LUT's version counter, so any update (optimizer, load_luts) drops it.
        self.cache_dense_on_cpu = True
        self._dense_cache: tuple[tuple, torch.Tensor] | None = None
        # CPU training: the codes are frozen, so their unpacked flat LUT positions are computed once
        # (unpacking on every call was ~40% of a CPU training step). 4 bytes per weight.
        self._index_cache: tuple[tuple, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"groups_per_row={self.groups_per_row}, bias={self.bias is not None}"
        )

    def dense_weight(self) -> torch.Tensor:
        """The materialized weight ``W_hat`` ([out, in], LUT dtype)."""
        return lut_dequant(self.lut, self.codes, self.bits, self.in_features)

    def _cached_dense(self) -> torch.Tensor:
        # .to()/.data swaps replace the storage without bumping _version: key on the pointer and dtype too.
        version = (self.lut._version, self.lut.data_ptr(), self.lut.dtype)
        if self._dense_cache is None or self._dense_cache[0] != version:
            self._dense_cache = (version, self.dense_weight().detach())
        return self._dense_cache[1]

    def _flat_index(self) -> torch.Tensor:
        key = (self.codes._version, self.codes.data_ptr(), self.lut.shape)
        if self._index_cache is None or self._index_cache[0] != key:
            self._index_cache = (key, lut_flat_index(self.codes, self.bits, self.lut.shape, self.in_features))
        return self._index_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache_dense_on_cpu and not x.is_cuda and not (torch.is_grad_enabled() and self.lut.requires_grad):
            y = x @ self._cached_dense().to(x.dtype).t()
            return y if self.bias is None else y + self.bias.to(y.dtype)
        self._dense_cache = None  # training: never hold a stale or extra dense copy
        tokens = x.numel() // x.shape[-1]
        use_fused = x.is_cuda and tokens <= self.fused_max_tokens
        flat_index = None if x.is_cuda else self._flat_index()
        return _LutLinearFn.apply(x, self.lut, self.codes, self.bias, self.bits, self.in_features, use_fused, flat_index,
                                  self.materialize_lut_grad)
