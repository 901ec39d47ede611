"""The ``lut-only`` export: a task adapter that is nothing but LUTs, plus a small JSON naming the base sketch
by path and content hash. Several such adapters share one base sketch (codes + dense tensors), like PEFT
adapters share a base model; the hash makes applying one to the wrong base a clear error, not garbage."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..artifacts import Manifest, parent_ref, resolve_ref
from ..errors import UserError
from ..loading import LUT_ADAPTER

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "sketchtune.lut-adapter/1"


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


def read_adapter_config(directory: str | Path) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"{directory} is not a lut-only export (no {ADAPTER_CONFIG})")
    config = json.loads(path.read_text())
    if config.get("format", "").rsplit("/", 1)[0] != ADAPTER_FORMAT.rsplit("/", 1)[0]:
        raise UserError(f"{path}: unknown adapter format {config.get('format')!r}")
    if int(config["format"].rsplit("/", 1)[1]) > int(ADAPTER_FORMAT.rsplit("/", 1)[1]):
        raise UserError(f"{path}: adapter format {config['format']} is newer than this sketchtune; upgrade it")
    return config


def base_sketch_of(adapter_dir: str | Path, base_path: str | Path | None = None) -> Manifest:
    """The adapter's base sketch (at its recorded path unless ``base_path`` is given), verified by hash."""
    config = read_adapter_config(adapter_dir)
    return resolve_ref(config["base_sketch"], adapter_dir, what="base sketch", stage="sketch", override=base_path)


def check_base_hash(adapter_dir, config: dict, content_hash: str) -> None:
    if config["base_sketch"]["content_hash"] != content_hash:
        raise UserError(
            f"{adapter_dir} was made for base sketch {config['base_sketch']['content_hash'][:12]}, not "
            f"{content_hash[:12]}; apply it to the sketch it was exported from"
        )


def read_adapter_luts(adapter_dir: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    return load_file(str(Path(adapter_dir) / LUT_ADAPTER), device=str(device))
