"""A sketch on disk: a Hugging Face model directory whose ``config.json`` carries
``quantization_config = {quant_method: "sketchtune", ...}`` and whose safetensors hold the dense tensors
(embeddings, norms, lm_head) plus ``<module>.lut`` and ``<module>.codes`` (and ``<module>.bias``) for each
sketched layer. No pickle anywhere.

This module writes sketch checkpoints; its transformers twin :mod:`.hf` (the quantizer ``from_pretrained``
dispatches to) reads them, for :func:`load_sketch` as for any user of ``from_pretrained``. Shards and their
index are huggingface_hub's (``save_torch_state_dict`` / ``model.safetensors.index.json``), the same layout
``save_pretrained`` writes."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from torch import nn

from .convert import sketched_layers

QUANT_METHOD = "sketchtune"
PACKING = "msb-first-bitstream"  # 4-bit = the SketchTune authors' nibble layout
DEFAULT_MAX_SHARD_SIZE = 4 << 30  # bytes; export.max_shard_size overrides it for hf-sketch exports


def quantization_config(model: nn.Module, **extra) -> dict:
    layers = sketched_layers(model)
    if not layers:
        raise ValueError("the model has no sketched layers")
    first = next(iter(layers.values()))
    return {
        "quant_method": QUANT_METHOD,
        "format_version": 1,
        "bits": first.bits,
        "groups_per_row": first.groups_per_row,
        "packing": PACKING,
        "lut_dtype": str(first.lut.dtype).removeprefix("torch."),
        "modules": list(layers),
        **extra,
    }


def _state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates, keeping the first name (``model.embed_tokens.weight``, the one
    ``tie_weights`` ties ``lm_head`` to); huggingface_hub's own dedupe would keep the alphabetically first."""
    out, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape)) if t.device.type != "meta" else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_sketch(model: nn.Module, tokenizer, directory: str | Path, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                **quant_extra) -> dict:
    """Save a sketched model as an HF directory: ``model.safetensors``, or shards of at most ``max_shard_size``
    (bytes or e.g. ``"5GB"``) plus an index; returns the quantization_config written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    qcfg = quantization_config(model, **quant_extra)
    save_torch_state_dict(_state_dict_for_saving(model), directory, max_shard_size=max_shard_size)
    config = model.config.to_dict()
    if config.get("dtype") is None:  # as save_pretrained does: the dense tensors' dtype, what "auto" loads
        config["dtype"] = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    config["quantization_config"] = qcfg
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return qcfg


def read_sketch_config(directory: str | Path) -> tuple[dict, dict]:
    """(model config dict without quantization_config, quantization_config)."""
    cfg = json.loads((Path(directory) / "config.json").read_text())
    qcfg = cfg.pop("quantization_config", None)
    if not qcfg or qcfg.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{directory} is not a sketchtune sketch (config.json has no sketchtune quantization_config)")
    return cfg, qcfg


def stored_lut_dtype(qcfg: dict) -> torch.dtype:
    """The dtype the LUTs were saved in; the quantizer loads them in it unless another dtype is asked for
    (``load_sketch(dtype=...)``, ``from_pretrained(dtype=...)`` other than the sketch's own)."""
    return getattr(torch, qcfg.get("lut_dtype", "float32"))


def load_sketch(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Load a sketch directory into a model with SketchedLinear layers (eval mode), through transformers'
    ``from_pretrained`` and the sketchtune quantizer (:mod:`.hf`): the one reader of sketch checkpoints.

    ``dtype`` casts the dense floating tensors and LUTs (codes stay uint8); default: as stored. A tensor the
    checkpoint lacks or one the model has no place for is an error, not a warning and a random init."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    read_sketch_config(directory)  # a clear error for a directory that is not a sketch
    model, info = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype or "auto", output_loading_info=True)
    if info.get("unexpected_keys"):
        raise ValueError(f"{directory}: unexpected tensors {sorted(info['unexpected_keys'])[:3]}")
    if info.get("missing_keys"):
        raise ValueError(f"{directory}: tensors missing from the checkpoint: {sorted(info['missing_keys'])[:3]}")
    return model.to(device).eval()
