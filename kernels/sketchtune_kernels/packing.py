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


def group_size(in_features: int, groups_per_row: int, where: str = "") -> int:
    """Columns per LUT group: the one check that ``groups_per_row`` divides ``in_features`` (``where`` names
    the layer in the message)."""
    if groups_per_row < 1 or in_features % groups_per_row:
        of = f" of {where}" if where else ""
        raise ValueError(f"groups_per_row={groups_per_row} does not divide in_features={in_features}{of}; "
                         f"pick a divisor of {in_features}")
    return in_features // groups_per_row


def packed_len(group_size: int, bits: int) -> int:
    """Bytes used by one (row, group) of ``group_size`` codes."""
    check_bits(bits)
    return (group_size * bits + 7) // 8


# Codes per chunk and bytes per chunk: a chunk is the smallest run of codes that fills whole bytes.
_CHUNK = {2: (4, 1), 3: (8, 3), 4: (2, 1)}


def _shifts(bits: int, device) -> torch.Tensor:
    """Right shifts that bring each code of a chunk word to the bottom, first code (MSB) first."""
    per_chunk, nbytes = _CHUNK[bits]
    return torch.arange(per_chunk - 1, -1, -1, device=device, dtype=torch.int32) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` uint8 ``[rows, G, n]`` with values < 2**bits -> packed uint8 ``[rows, G, packed_len(n)]``.

    Works chunk-wise (4 codes -> 1 byte at 2 bits, 8 codes -> 3 bytes at 3 bits, 2 -> 1 at 4 bits) in int32,
    which keeps temporaries a few bytes per code even for 14336-wide layers."""
    check_bits(bits)
    if codes.dim() != 3:
        raise ValueError(f"codes must be [rows, groups, group_size], got shape {tuple(codes.shape)}")
    rows, groups, n = codes.shape
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ValueError(f"code {int(codes.max())} does not fit in {bits} bits")
    per_chunk, chunk_bytes = _CHUNK[bits]
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, -n % per_chunk))
    words = (c.reshape(rows, groups, -1, per_chunk) << _shifts(bits, codes.device)).sum(-1, dtype=torch.int32)
    byte_shifts = torch.arange(chunk_bytes - 1, -1, -1, device=codes.device, dtype=torch.int32) * 8
    packed = ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(rows, groups, -1)
    return packed[..., : packed_len(n, bits)].contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: packed uint8 ``[rows, G, nbytes]`` -> uint8 ``[rows, G, group_size]``."""
    check_bits(bits)
    rows, groups, nbytes = packed.shape
    if nbytes != packed_len(group_size, bits):
        raise ValueError(
            f"packed codes have {nbytes} bytes per group, expected {packed_len(group_size, bits)} "
            f"for {group_size} codes of {bits} bits"
        )
    if bits == 4:  # uint8 all the way: the hot path of the CPU forward
        out = torch.stack((packed >> 4, packed & 0xF), dim=-1).reshape(rows, groups, nbytes * 2)
        return out[..., :group_size]
    per_chunk, chunk_bytes = _CHUNK[bits]
    p = torch.nn.functional.pad(packed, (0, -nbytes % chunk_bytes)).reshape(rows, groups, -1, chunk_bytes)
    if chunk_bytes == 1:
        words = p[..., 0]
    else:
        words = (p[..., 0].to(torch.int32) << 16) | (p[..., 1].to(torch.int32) << 8) | p[..., 2].to(torch.int32)
    out = (words.unsqueeze(-1) >> _shifts(bits, packed.device).to(words.dtype)) & (2**bits - 1)
    return out.to(torch.uint8).reshape(rows, groups, -1)[..., :group_size]
