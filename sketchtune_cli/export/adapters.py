"""Serve several task adapters (``lut-only`` exports) over one base sketch in memory.

The codes and dense tensors, nearly all of a sketch's bytes, are loaded once. Each adapter is only LUTs
(for Llama-3-8B at G=4, 88M values against 8B codes), kept ready in the model's LUT dtype and device, and
activating one copies them into the live ``lut`` parameters in place: no reload, no new tensors, so
references to the model (an optimizer, a compiled graph, a server's handle) stay valid. The base and the
adapters are read through :mod:`sketchtune_cli.loading`."""
from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import Manifest, is_artifact, read_manifest
from ..errors import UserError
from ..loading import base_sketch_of, check_base_hash, load_sketch_artifact, read_adapter_config, read_adapter_luts
from ..sketch import lut_state_dict, sketched_layers

BASE = "base"  # name of the base sketch's own LUTs, always available


class AdapterBank:
    def __init__(self, base: Manifest, device: str = "cpu", dtype: torch.dtype | None = None):
        self.model, self.tokenizer, self.base = load_sketch_artifact(base, device=device, dtype=dtype)
        self.layers = {f"{n}.lut": m for n, m in sketched_layers(self.model).items()}
        self.adapters: dict[str, dict[str, torch.Tensor]] = {BASE: {k: v.clone() for k, v in lut_state_dict(self.model).items()}}
        self.active = BASE

    @classmethod
    def from_adapter(cls, adapter_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> "AdapterBank":
        """A bank over the base sketch ``adapter_dir`` names, with that adapter added."""
        bank = cls(base_sketch_of(adapter_dir), device=device, dtype=dtype)
        bank.add(adapter_dir)
        return bank

    def add(self, adapter_dir: str | Path, name: str | None = None) -> str:
        """Read an adapter (checksums, base hash, keys and shapes checked) and keep it ready; returns its
        name (default: the directory's path as given)."""
        name = name or str(adapter_dir)
        if is_artifact(adapter_dir):
            read_manifest(adapter_dir, stage="export")  # verifies the files' checksums
        check_base_hash(adapter_dir, read_adapter_config(adapter_dir), self.base.content_hash)
        luts = read_adapter_luts(adapter_dir)
        if set(luts) != set(self.layers):
            raise UserError(f"{adapter_dir}: its LUT names do not match the base sketch's layers")
        ready = {}
        for key, layer in self.layers.items():
            if luts[key].shape != layer.lut.shape:
                raise UserError(f"{adapter_dir}: {key} has shape {tuple(luts[key].shape)}, expected {tuple(layer.lut.shape)}")
            ready[key] = luts[key].to(device=layer.lut.device, dtype=layer.lut.dtype).contiguous()
        self.adapters[name] = ready
        return name

    def activate(self, name: str) -> None:
        """Make adapter ``name`` (or ``"base"``) the model's LUTs, copying in place."""
        if name not in self.adapters:
            raise UserError(f"no adapter {name!r} loaded; loaded: {', '.join(self.adapters)}")
        luts = self.adapters[name]
        with torch.no_grad():
            for key, layer in self.layers.items():
                layer.lut.copy_(luts[key])
        self.active = name

    def remove(self, name: str) -> None:
        if name == BASE:
            raise UserError("the base LUTs cannot be removed")
        if self.active == name:
            self.activate(BASE)
        self.adapters.pop(name, None)

    def adapter_bytes(self, name: str) -> int:
        return sum(t.numel() * t.element_size() for t in self.adapters[name].values())

    def model_bytes(self) -> int:
        """Bytes of the loaded model: parameters and buffers (tied tensors once)."""
        seen, total = set(), 0
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total
