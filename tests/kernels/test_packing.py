"""Bit packing: round trips for every width, and the exact bytes of each layout."""
import pytest
import torch

from sketchtune_kernels import pack_codes, packed_len, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [1, 3, 5, 7, 8, 13, 16, 33])
def test_round_trip(bits, group_size):
    gen = torch.Generator().manual_seed(bits * 100 + group_size)
    codes = torch.randint(0, 2**bits, (3, 2, group_size), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, 2, packed_len(group_size, bits))
    assert torch.equal(unpack_codes(packed, bits, group_size), codes)


def test_packed_len():
    assert [packed_len(n, 4) for n in (1, 2, 3, 8)] == [1, 1, 2, 4]
    assert [packed_len(n, 3) for n in (1, 3, 8, 9)] == [1, 2, 3, 4]
    assert [packed_len(n, 2) for n in (1, 4, 5)] == [1, 1, 2]


def test_four_bit_is_the_authors_layout():
    """Two codes per byte, the even column in the high nibble; an odd tail pads the low nibble with 0."""
    codes = torch.tensor([[[1, 2, 3, 4, 15]]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[[0x12, 0x34, 0xF0]]]


def test_two_bit_bytes():
    codes = torch.tensor([[[0, 1, 2, 3, 3]]], dtype=torch.uint8)
    assert pack_codes(codes, 2).tolist() == [[[0b00011011, 0b11000000]]]


def test_three_bit_bytes_straddle():
    """001 010 011 100 101 110 111 000 -> 00101001 11001011 10111000; codes 2, 5 cross byte boundaries."""
    codes = torch.tensor([[[1, 2, 3, 4, 5, 6, 7, 0]]], dtype=torch.uint8)
    assert pack_codes(codes, 3).tolist() == [[[0x29, 0xCB, 0xB8]]]
    odd = torch.tensor([[[7, 7, 7]]], dtype=torch.uint8)  # 9 bits -> 2 bytes, 7 zero pad bits
    assert pack_codes(odd, 3).tolist() == [[[0xFF, 0x80]]]


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        pack_codes(torch.full((1, 1, 2), 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError):
        pack_codes(torch.zeros(2, 2, dtype=torch.uint8), 4)
    with pytest.raises(ValueError):
        pack_codes(torch.zeros(1, 1, 2, dtype=torch.uint8), 5)
    with pytest.raises(ValueError):
        unpack_codes(torch.zeros(1, 1, 3, dtype=torch.uint8), 4, 8)
