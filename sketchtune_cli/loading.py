"""The one loader: turn anything a stage can consume into a model. A sketch artifact, a fine-tune artifact
(its base sketch plus its LUTs), an export in any format (a ``lut-only`` one is its base sketch plus its
LUTs too), or a plain model spec (alias / Hub id / directory / GGUF) as a baseline.

Artifacts may be given as paths or as :class:`Manifest` objects a caller already read; a verified one
(``manifest.verified``) is not hashed again, so each artifact's files are hashed once per process. The
``lut-only`` adapter format is read here (``export/`` only writes it)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .artifacts import Manifest, check_stage, ensure_verified, is_artifact, read_manifest, resolve_ref
from .errors import UserError
from .models import load_model, quiet_progress, torch_dtype

LUT_ADAPTER = "lut_adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "sketchtune.lut-adapter/1"
EXPORT_FORMATS = ("hf-dense", "hf-sketch", "lut-only")  # export.settings' Literal (the loader may not import a stage)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

Artifact = str | Path | Manifest  # a path, or a manifest already read (verified or not)


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    kind: str  # "sketch" | "finetune" | "export" | "model"
    manifest: Manifest | None
    label: str


def artifact(source: Artifact, stage: str | tuple[str, ...] | None = None) -> Manifest:
    """``source``'s manifest with its files verified: read (and hashed) if a path, hashed only if not yet
    verified if a manifest. The stage is checked either way."""
    if not isinstance(source, Manifest):
        return read_manifest(source, stage=stage)
    check_stage(source.stage, source.path, stage)
    return ensure_verified(source)


# ---- sketches and fine-tunes ----------------------------------------------------------------------------

def load_tokenizer_if_any(directory: str | Path):
    """The tokenizer saved beside a model, or None (tiny test sketches have none; real ones always do)."""
    from transformers import AutoTokenizer

    if not any((Path(directory) / f).is_file() for f in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(str(directory))


def load_sketch_artifact(source: Artifact, device="cpu", dtype=None) -> tuple[torch.nn.Module, object, Manifest]:
    """A sketch artifact's model and tokenizer (None when it has none), and its verified manifest."""
    from .sketch import load_sketch

    manifest = artifact(source, "sketch")
    model = load_sketch(manifest.path, device=device, dtype=dtype)
    return model, load_tokenizer_if_any(manifest.path), manifest


def parent_of(manifest: Manifest, stage: str | tuple[str, ...], base: Artifact | None = None,
              verify: bool = True) -> Manifest:
    """The parent artifact, checked to be the very one this artifact was made from (content hash); ``base``
    (``--base``, or the parent's manifest a caller holds) re-points it at a parent that moved on its own."""
    if not manifest.parent:
        raise UserError(f"{manifest.path} records no parent artifact")
    return resolve_ref(manifest.parent, manifest.path, what="base sketch", stage=stage, override=base, verify=verify)


def apply_lut_file(model: torch.nn.Module, lut_file: Path, device="cpu") -> None:
    """Copy a LUT file (``<module>.lut`` tensors) into a sketched model's layers."""
    from .sketch import load_luts

    luts = load_file(str(lut_file), device=str(device))
    try:
        load_luts(model, luts)
    except ValueError as e:
        raise UserError(f"{lut_file}: {e}") from None


def load_with_luts(base: Manifest, lut_file: Path | None, device="cpu", dtype=None):
    """``(model, tokenizer)``: the base sketch, its LUTs replaced by ``lut_file``'s when given. The one
    place a fine-tune (or lut-only export) is put together."""
    model, tokenizer, _ = load_sketch_artifact(base, device, dtype)
    if lut_file is not None:
        apply_lut_file(model, lut_file, device)
    return model, tokenizer


def finetune_base(manifest: Manifest, base: Artifact | None = None) -> Manifest:
    """The verified base sketch a sketch or fine-tune artifact stands on (a sketch: itself)."""
    return artifact(manifest) if manifest.stage == "sketch" else parent_of(manifest, "sketch", base)


def lut_file_of(manifest: Manifest) -> Path | None:
    """The fine-tuned LUTs a sketch or fine-tune artifact applies to its base (a sketch: none)."""
    return Path(manifest.path) / LUT_ADAPTER if manifest.stage == "finetune" else None


# ---- lut-only adapters -------------------------------------------------------------------------------------

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


def base_sketch_of(adapter_dir: str | Path, base_path: Artifact | None = None, verify: bool = True) -> Manifest:
    """The adapter's base sketch (at its recorded path unless ``base_path`` is given), checked by content
    hash; its files are hashed too unless ``verify`` is False (a preflight)."""
    return resolve_ref(read_adapter_config(adapter_dir)["base_sketch"], adapter_dir, what="base sketch",
                       stage="sketch", override=base_path, verify=verify)


def check_base_hash(adapter_dir, config: dict, content_hash: str) -> None:
    if config["base_sketch"]["content_hash"] != content_hash:
        raise UserError(
            f"{adapter_dir} was made for base sketch {config['base_sketch']['content_hash'][:12]}, not "
            f"{content_hash[:12]}; apply it to the sketch it was exported from"
        )


def read_adapter_luts(adapter_dir: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    return load_file(str(Path(adapter_dir) / LUT_ADAPTER), device=str(device))


# ---- exports -----------------------------------------------------------------------------------------------

def export_format(manifest: Manifest) -> str:
    fmt = manifest.results.get("format") or (manifest.config.get("export") or {}).get("format")
    if fmt not in EXPORT_FORMATS:
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

        with quiet_progress():  # loading is not the stage's work: no third-party bar before its own lines
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto")
        return model.to(device).eval(), load_tokenizer_if_any(path)
    if fmt == "hf-sketch":
        from .sketch import load_sketch

        return load_sketch(path, device=device, dtype=dtype), load_tokenizer_if_any(path)
    return load_with_luts(base_sketch_of(path, base), path / LUT_ADAPTER, device, dtype)


# ---- anything ----------------------------------------------------------------------------------------------

def load_any(spec: Artifact, device: str = "cpu", dtype: str | torch.dtype | None = None,
             base: Artifact | None = None) -> Loaded:
    """Build the model an artifact or spec stands for, on ``device`` in eval mode. ``base`` (``--base``, or
    the base sketch's manifest a caller holds) re-points a fine-tune or lut-only export at its base sketch."""
    if isinstance(spec, Manifest):
        label, manifest = str(spec.path), artifact(spec)
    elif is_artifact(spec):
        label, manifest = str(spec), read_manifest(spec)
    else:
        model, tok = load_model(str(spec), dtype=torch_dtype(dtype or "auto", device), device=device)
        return Loaded(model, tok, "model", None, str(spec))
    dt = None if dtype in (None, "auto") else torch_dtype(dtype, device)
    if manifest.stage in ("sketch", "finetune"):
        model, tok = load_with_luts(finetune_base(manifest, base), lut_file_of(manifest), device, dt)
    elif manifest.stage == "export":
        model, tok = load_export(manifest, device=device, dtype=dt, base=base)
    else:
        raise UserError(f"{label} is an {manifest.stage} artifact; give a sketch, fine-tune or export artifact, or a model")
    return Loaded(model, tok, manifest.stage, manifest, label)
