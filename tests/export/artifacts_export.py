"""Builders of test artifacts: sketch (random LUTs/codes) and fake fine-tune artifacts."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from helpers import random_sketches


def tiny_tokenizer(vocab_size: int = 128):
    """A word-level fast tokenizer over ``t0 .. t{n-1}``: enough for save/load and generate."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token="t1", pad_token="t2", bos_token="t3")


def write_sketch_artifact(out: Path, model, tokenizer, name: str):
    """A sketch artifact as compress would write it (random sketches: a format fixture, not a good sketch)."""
    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.sketch import replace_with_sketches, save_sketch

    replace_with_sketches(model, random_sketches(model))
    with write_artifact(out, "sketch", {"model": {"name": name}, "compress": {"bits": 4, "groups_per_row": 4}}) as w:
        save_sketch(model, tokenizer, w.path)
    return w.manifest


def write_finetune_artifact(out: Path, sketch_manifest, seed: int = 1, scale: float = 0.02):
    """A fake fine-tune: the base sketch's LUTs perturbed, saved as ``lut_adapter.safetensors``."""
    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.loading import LUT_ADAPTER
    from sketchtune_cli.sketch import load_sketch, lut_state_dict

    model = load_sketch(sketch_manifest.path)
    g = torch.Generator().manual_seed(seed)
    luts = {k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)).contiguous()
            for k, v in lut_state_dict(model).items()}
    with write_artifact(out, "finetune", {"train": {"lr": 1e-4, "seed": seed}}, parent=sketch_manifest) as w:
        save_file(luts, str(w.path / LUT_ADAPTER))
        w.results = {"final_loss": 1.23}
    return w.manifest
