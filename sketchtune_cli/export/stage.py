"""The export stage (`sketchtune export` as a function): load a sketch or fine-tune artifact through
:mod:`sketchtune_cli.loading`, write one export format into an export artifact (manifest + model card),
return its manifest. Reading exports back is the loader's work, not this package's."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..artifacts import Manifest, check_output, dir_bytes, is_artifact, lineage, read_manifest, write_artifact
from ..errors import UserError
from ..models import torch_dtype
from ..loading import Artifact, artifact, finetune_base, load_with_luts, lut_file_of
from ..sketch import read_sketch_config
from . import formats, model_card
from .settings import ExportSettings

log = logging.getLogger(__name__)


def export_artifact(source: Artifact, out: str | Path, settings: ExportSettings, overwrite: bool = False,
                    eval_artifacts: list[Artifact] = (), base: Artifact | None = None) -> Manifest:
    """Write ``settings.format`` of ``source`` (sketch or fine-tune artifact, or its manifest) to ``out``;
    ``base`` re-points a fine-tune at a base sketch that moved on its own (or is its manifest, already read)."""
    out = Path(out)
    check_output(out, overwrite)  # fail before the (slow) load
    manifest = artifact(source, ("sketch", "finetune"))
    base = finetune_base(manifest, base)
    evals = _eval_manifests(manifest, eval_artifacts)
    # in fp32: exact W_hat, cast once when writing
    model, tokenizer = load_with_luts(base, lut_file_of(manifest), "cpu", torch.float32)
    if tokenizer is None:  # tiny test sketches have none; real ones always do
        log.warning("%s has no tokenizer; the export will have none either", base.path)
    base_config, base_qcfg = read_sketch_config(base.path)
    results = _results(settings, model, manifest, base, base_config, base_qcfg)
    config = {"export": settings.model_dump(mode="json")}
    dtype = torch_dtype(settings.dtype)
    log.info("exporting %s as %s (%s) to %s", manifest.path, settings.format, settings.dtype, out)
    with write_artifact(out, "export", config, parent=manifest, overwrite=overwrite) as writer:
        if settings.format == "hf-dense":
            formats.write_hf_dense(model, tokenizer, writer.path, dtype, settings.max_shard_size)
        elif settings.format == "hf-sketch":
            formats.write_hf_sketch(model, tokenizer, writer.path, dtype, base_qcfg, settings.max_shard_size)
        else:
            formats.write_lut_only(model, writer.path, dtype, base, base_qcfg)
        results["sizes"]["export_bytes"] = dir_bytes(writer.path)
        results["eval"] = {str(m.path): m.results for m in evals}
        card = model_card.render(settings.format, out.resolve(), results, lineage(manifest), evals)
        (writer.path / "README.md").write_text(card)
        writer.results = results
    return writer.manifest


def _results(settings: ExportSettings, model, manifest: Manifest, base: Manifest, base_config: dict,
             base_qcfg: dict) -> dict:
    sizes = formats.model_sizes(model)
    sizes["base_sketch_bytes"] = sum((Path(base.path) / rel).stat().st_size for rel in base.files)
    return {
        "format": settings.format,
        "dtype": settings.dtype,
        "source_stage": manifest.stage,
        "base_model": base_model_name(base, base_config),
        "bits": base_qcfg["bits"],
        "groups_per_row": base_qcfg["groups_per_row"],
        "base_sketch": {"path": str(Path(base.path).resolve()), "content_hash": base.content_hash},
        "sizes": sizes,
    }


def base_model_name(sketch: Manifest, config: dict) -> str:
    """The model the sketch was compressed from: its recorded config (``model.name``), else ``config``'s (its
    config.json, as :func:`read_sketch_config` returns it) ``_name_or_path``, else 'unknown'."""
    model_cfg = sketch.config.get("model") if isinstance(sketch.config, dict) else None
    if isinstance(model_cfg, dict) and model_cfg.get("name"):
        return str(model_cfg["name"])
    return config.get("_name_or_path") or "unknown"


def _eval_manifests(manifest: Manifest, extra: list[Artifact]) -> list[Manifest]:
    """Eval artifacts of this very artifact: those named with --eval (paths or manifests), plus sibling
    directories whose parent is it (``sketchtune run`` writes eval beside finetune)."""
    found = {}
    for given in extra:
        m = artifact(given, "eval")
        path = m.path if isinstance(given, Manifest) else given
        if not m.parent or m.parent.get("content_hash") != manifest.content_hash:
            log.warning("%s evaluated a different artifact than %s; including it anyway", path, manifest.path)
        found[Path(path).resolve()] = m
    for sibling in sorted(Path(manifest.path).resolve().parent.iterdir()):
        if sibling in found or not sibling.is_dir() or not is_artifact(sibling):
            continue
        try:
            m = read_manifest(sibling, stage="eval", verify=False)
        except UserError:
            continue
        if m.parent and m.parent.get("content_hash") == manifest.content_hash:
            found[sibling] = m
    return list(found.values())
