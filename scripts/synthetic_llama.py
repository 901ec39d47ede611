"""Random-weight Llama decoders of real shapes (default: Llama-3-8B's blocks), for the GPU timing scripts:
the time a block takes depends on its shapes, not on its values."""
from __future__ import annotations

import argparse

import torch


def add_shape_args(p: argparse.ArgumentParser, blocks: int) -> None:
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--blocks", type=int, default=blocks, help=f"decoder blocks to time (default {blocks})")


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
