"""The ``lut-only`` export: a task adapter that is nothing but LUTs, plus a small JSON naming the base sketch
by path and content hash. Several such adapters share one base sketch (codes + dense tensors), like PEFT
adapters share a base model; the hash makes applying one to the wrong base a clear error, not garbage.

This module writes the format; :mod:`sketchtune_cli.loading` reads it (``read_adapter_config``,
``base_sketch_of``, ``load_export``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..artifacts import Manifest, parent_ref
from ..loading import ADAPTER_CONFIG, ADAPTER_FORMAT, LUT_ADAPTER


def write_lut_adapter(directory: Path, luts: dict[str, torch.Tensor], base: Manifest, qcfg: dict) -> None:
    """Write ``lut_adapter.safetensors`` + ``adapter_config.json`` (base sketch path and content hash)."""
    save_file({k: v.contiguous().cpu() for k, v in luts.items()}, directory / LUT_ADAPTER, metadata={"format": "pt"})
    config = {
        "format": ADAPTER_FORMAT,
        # path relative to the adapter (the .partial directory is the final one's sibling: same relative path)
        "base_sketch": parent_ref(base, directory),
        "bits": qcfg["bits"],
        "groups_per_row": qcfg["groups_per_row"],
        "lut_dtype": str(next(iter(luts.values())).dtype).removeprefix("torch."),
        "modules": sorted(k.removesuffix(".lut") for k in luts),
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
