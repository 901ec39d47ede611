"""Load anything a stage can consume as a model: a sketch artifact, a fine-tune artifact (its base sketch
plus its LUTs), an export, or a plain model spec (alias / Hub id / directory / GGUF) as a baseline."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .artifacts import Manifest, is_artifact, read_manifest, resolve_ref
from .errors import UserError
from .models import load_model, torch_dtype

LUT_ADAPTER = "lut_adapter.safetensors"


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    kind: str  # "sketch" | "finetune" | "export" | "model"
    manifest: Manifest | None
    label: str


def load_sketch_artifact(path: str | Path, device="cpu", dtype=None) -> tuple[torch.nn.Module, object, Manifest]:
    from transformers import AutoTokenizer

    from .sketch import load_sketch

    manifest = read_manifest(path, stage="sketch")
    model = load_sketch(manifest.path, device=device, dtype=dtype)
    has_tokenizer = any((manifest.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    return model, AutoTokenizer.from_pretrained(manifest.path) if has_tokenizer else None, manifest


def parent_of(manifest: Manifest, stage: str | tuple[str, ...], base: str | Path | None = None) -> Manifest:
    """The parent artifact, checked to be the very one this artifact was made from (content hash); ``base``
    (``--base``) re-points it at a parent that moved on its own."""
    if not manifest.parent:
        raise UserError(f"{manifest.path} records no parent artifact")
    return resolve_ref(manifest.parent, manifest.path, what="base sketch", stage=stage, override=base)


def apply_lut_file(model: torch.nn.Module, lut_file: Path) -> None:
    from .sketch import load_luts

    luts = load_file(str(lut_file))
    try:
        load_luts(model, luts)
    except ValueError as e:
        raise UserError(f"{lut_file}: {e}") from None


def load_any(spec: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None,
             base: str | Path | None = None) -> Loaded:
    """Build the model an artifact or spec stands for, on ``device`` in eval mode. ``base`` (``--base``)
    re-points a fine-tune or lut-only export at a base sketch that moved on its own."""
    dt = None if dtype in (None, "auto") and is_artifact(spec) else torch_dtype(dtype or "auto", device)
    if not is_artifact(spec):
        model, tok = load_model(str(spec), dtype=dt, device=device)
        return Loaded(model, tok, "model", None, str(spec))
    manifest = read_manifest(spec)
    if manifest.stage == "sketch":
        model, tok, manifest = load_sketch_artifact(spec, device, dt)
        return Loaded(model, tok, "sketch", manifest, str(spec))
    if manifest.stage == "finetune":
        base_sketch = parent_of(manifest, "sketch", base)
        model, tok, _ = load_sketch_artifact(base_sketch.path, device, dt)
        apply_lut_file(model, Path(spec) / LUT_ADAPTER)
        return Loaded(model, tok, "finetune", manifest, str(spec))
    if manifest.stage == "export":
        from .export.loading import load_export

        model, tok = load_export(manifest, device=device, dtype=dt, base=base)
        return Loaded(model, tok, "export", manifest, str(spec))
    raise UserError(f"{spec} is an {manifest.stage} artifact; give a sketch, fine-tune or export artifact, or a model")
