"""The three export formats, each a function that fills a directory from a loaded sketched model.

- ``hf-dense``: ``W_hat`` materialized into ordinary nn.Linear weights; a plain transformers checkpoint
  (no sketchtune entry anywhere in its config) for vLLM, TGI, llama.cpp converters and the like.
- ``hf-sketch``: the packed sketch with the (fine-tuned) LUTs folded in; loads with
  ``AutoModelForCausalLM.from_pretrained`` once ``sketchtune_cli`` is imported, and trains further.
- ``lut-only``: only the LUTs + the base sketch's content hash: the adapter to share.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..artifacts import Manifest
from ..sketch import lut_state_dict, materialize_dense, save_sketch, sketched_layers
from .lut_adapter import write_lut_adapter

# quantization_config keys save_sketch derives from the model; any others (compress settings) are carried over
_DERIVED_QCFG_KEYS = {"quant_method", "format_version", "bits", "groups_per_row", "packing", "lut_dtype", "modules"}


def write_hf_dense(model: nn.Module, tokenizer, directory: Path, dtype: torch.dtype, max_shard_size: str) -> None:
    """Materialize in the model's (fp32) precision, then cast once: the weights are exactly the sketch's
    ``W_hat`` rounded to ``dtype``, i.e. what the sketch computes with when run in ``dtype``."""
    materialize_dense(model)
    model.to(dtype)
    _drop_quantization_config(model)
    model.config.dtype = dtype
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _drop_quantization_config(model: nn.Module) -> None:
    for attr in ("quantization_config", "_is_quantized"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)


def write_hf_sketch(model: nn.Module, tokenizer, directory: Path, dtype: torch.dtype, base_qcfg: dict,
                    max_shard_size: str) -> None:
    """Reuse the sketch format itself: codes unchanged, LUTs (and dense tensors) in ``dtype``."""
    model.to(dtype)  # floating tensors only: packed codes stay uint8
    model.config.dtype = dtype
    extra = {k: v for k, v in base_qcfg.items() if k not in _DERIVED_QCFG_KEYS}
    save_sketch(model, tokenizer, directory, max_shard_size=max_shard_size, **extra)


def write_lut_only(model: nn.Module, directory: Path, dtype: torch.dtype, base: Manifest, base_qcfg: dict) -> None:
    luts = {k: v.to(dtype) for k, v in lut_state_dict(model).items()}
    write_lut_adapter(directory, luts, base, base_qcfg)


def model_sizes(model: nn.Module) -> dict:
    """Parameter counts of a sketched model: trainable LUT values, the dense model it stands for, and the
    sketch's storage (codes at ``bits/8`` bytes per weight)."""
    layers = sketched_layers(model)
    lut_params = sum(m.lut.numel() for m in layers.values())
    sketched_weights = sum(m.in_features * m.out_features for m in layers.values())
    code_bytes = sum(m.codes.numel() for m in layers.values())
    other_params = 0
    for name, p in model.named_parameters():  # named_parameters skips tied duplicates
        if not name.endswith(".lut"):
            other_params += p.numel()
    return {
        "trainable_params": lut_params,
        "sketched_layers": len(layers),
        "dense_params": sketched_weights + other_params,
        "code_bytes": code_bytes,
        "unsketched_params": other_params,
    }
