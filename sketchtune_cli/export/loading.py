"""Load an export artifact back as a model, whatever its format (``loading.load_any`` calls this)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import Manifest
from ..errors import UserError
from ..sketch import load_luts, load_sketch
from .lut_adapter import base_sketch_of, read_adapter_luts
from .run import load_tokenizer_if_any


def export_format(manifest: Manifest) -> str:
    fmt = manifest.results.get("format") or (manifest.config.get("export") or {}).get("format")
    if fmt not in ("hf-dense", "hf-sketch", "lut-only"):
        raise UserError(f"{manifest.path}: export of unknown format {fmt!r}")
    return fmt


def load_export(manifest: Manifest, device: str = "cpu", dtype: torch.dtype | None = None, base=None):
    """``(model, tokenizer)`` in eval mode on ``device``; ``dtype`` None keeps the exported dtype.
    A lut-only export loads its base sketch (found by its recorded path, or ``base`` if given; checked by
    content hash)."""
    path = Path(manifest.path)
    fmt = export_format(manifest)
    if fmt == "hf-dense":
        from transformers import AutoModelForCausalLM

        from ..models import quiet_progress

        with quiet_progress():  # loading is not the stage's work: no third-party bar before its own lines
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto")
        return model.to(device).eval(), load_tokenizer_if_any(path)
    if fmt == "hf-sketch":
        return load_sketch(path, device=device, dtype=dtype), load_tokenizer_if_any(path)
    base = base_sketch_of(path, base)
    model = load_sketch(base.path, device=device, dtype=dtype)
    try:
        load_luts(model, read_adapter_luts(path, device))
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return model, load_tokenizer_if_any(base.path)
