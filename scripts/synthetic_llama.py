"""Random-weight Llama decoders of real shapes (default: Llama-3-8B's blocks), for the GPU timing scripts:
the time a block takes depends on its shapes, not on its values. Also the LoRA rank that matches a sketch's
trainable count on such shapes (time_finetune_block.py, and bench_finetune.py on SmolLM2-135M's)."""
from __future__ import annotations

import argparse

import torch


def add_shape_args(p: argparse.ArgumentParser, blocks: int) -> None:
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--blocks", type=int, default=blocks, help=f"decoder blocks to time (default {blocks})")


def block_shapes(a) -> list[tuple[int, int]]:
    """(rows, cols) of the seven linears of one block of ``a``'s shapes: q, k, v, o, gate, up, down."""
    kv = a.kv_heads * (a.hidden // a.heads)
    h, i = a.hidden, a.intermediate
    return [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]


def matched_lora_rank(a, groups_per_row: int) -> int:
    """LoRA rank whose trainable count matches an ``a.bits``-bit sketch's: r (rows + cols) vs rows * G * 2^bits."""
    shapes = block_shapes(a)
    sketch = sum(rows * groups_per_row * 2**a.bits for rows, _ in shapes)
    return max(1, round(sketch / sum(rows + cols for rows, cols in shapes)))


def synthetic_llama(a, *, vocab: int, max_positions: int, dtype: torch.dtype, device="cpu") -> torch.nn.Module:
    """A LlamaForCausalLM of ``a``'s shapes (:func:`add_shape_args`), seeded, in ``dtype`` on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, num_hidden_layers=a.blocks,
                         max_position_embeddings=max_positions, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype)
