"""Bit packing of sketch codes: one MSB-first bitstream per (row, group).

Codes of one (row, group) are written one after another, most significant bit first, and the stream is
padded with zero bits to a whole byte. For 4 bits this is exactly the SketchTune authors' layout (two
codes per byte, the even column in the high nibble, shape ``[rows, G, cols/G/2]``). For 2 bits it is four
codes per byte, the first in the top two bits. For 3 bits, eight codes fill three bytes and a code may
straddle a byte boundary; a group whose length is not a multiple of 8 is padded to whole bytes.
"""
from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4)


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")


def packed_len(group_size: int, bits: int) -> int:
    """Bytes used by one (row, group) of ``group_size`` codes."""
    check_bits(bits)
    return (group_size * bits + 7) // 8


def _bit_weights(bits: int, device) -> torch.Tensor:
    return 2 ** torch.arange(bits - 1, -1, -1, device=device, dtype=torch.int32)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` uint8 ``[rows, G, n]`` with values < 2**bits -> packed uint8 ``[rows, G, packed_len(n)]``."""
    check_bits(bits)
    if codes.dim() != 3:
        raise ValueError(f"codes must be [rows, groups, group_size], got shape {tuple(codes.shape)}")
    rows, groups, n = codes.shape
    c = codes.to(torch.int32)
    if c.numel() and int(c.max()) >= 2**bits:
        raise ValueError(f"code {int(c.max())} does not fit in {bits} bits")
    if bits == 4:  # fast path, the authors' layout
        if n % 2:
            c = torch.nn.functional.pad(c, (0, 1))
        return ((c[..., 0::2] << 4) | c[..., 1::2]).to(torch.uint8)
    # General path: expand to a bitstream, pad to whole bytes, fold 8 bits into a byte.
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device, dtype=torch.int32)
    stream = ((c.unsqueeze(-1) >> shifts) & 1).reshape(rows, groups, n * bits)
    nbytes = packed_len(n, bits)
    stream = torch.nn.functional.pad(stream, (0, nbytes * 8 - n * bits))
    byte_weights = 2 ** torch.arange(7, -1, -1, device=codes.device, dtype=torch.int32)
    return (stream.reshape(rows, groups, nbytes, 8) * byte_weights).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: packed uint8 ``[rows, G, nbytes]`` -> uint8 ``[rows, G, group_size]``."""
    check_bits(bits)
    rows, groups, nbytes = packed.shape
    if nbytes != packed_len(group_size, bits):
        raise ValueError(
            f"packed codes have {nbytes} bytes per group, expected {packed_len(group_size, bits)} "
            f"for {group_size} codes of {bits} bits"
        )
    p = packed.to(torch.int32)
    if bits == 4:
        out = torch.stack((p >> 4, p & 0xF), dim=-1).reshape(rows, groups, nbytes * 2)
        return out[..., :group_size].to(torch.uint8)
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.int32)
    stream = ((p.unsqueeze(-1) >> shifts) & 1).reshape(rows, groups, nbytes * 8)
    stream = stream[..., : group_size * bits].reshape(rows, groups, group_size, bits)
    return (stream * _bit_weights(bits, packed.device)).sum(-1).to(torch.uint8)
