"""The export stage behind ``stages.Stage``: sketch or fine-tune -> hf-dense, hf-sketch or lut-only."""
from __future__ import annotations

from pathlib import Path

from .. import preflight
from ..artifacts import is_artifact, read_manifest
from ..errors import UserError
from ..stages import Stage
from .settings import RESULT_FREE, SECTIONS

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def shard_size_problems(size: str) -> list[str]:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        n = convert_file_size_to_int(size)
    except (ValueError, TypeError):
        n = None
    if n is None or n <= 0:
        return [f"export.max_shard_size={size!r} is not a positive size; use one like 5GB or 500MB"]
    return []


def check(cfg, job) -> list[str]:
    problems = shard_size_problems(cfg.export.max_shard_size)
    if not job.pending:
        for source in job.inputs:
            problems += preflight.artifact_problems(source, ("sketch", "finetune"), job.base)
    return problems


def _sketch_of(job) -> str | None:
    """The base sketch behind the job's input (to size the export), if it can be found now."""
    if job.pending or not job.inputs:
        return None
    try:
        manifest = read_manifest(job.inputs[0], verify=False)
        if manifest.stage == "sketch":
            return str(manifest.path)
        from ..loading import parent_of

        return str(parent_of(manifest, "sketch", job.base, verify=False).path) if manifest.parent else None
    except UserError:
        return None


def plan(cfg, job) -> dict:
    est = preflight.estimate_of(_sketch_of(job), job.planned_sketch)
    if est is None:
        return {"format": cfg.export.format}
    scale = DTYPE_BYTES[cfg.export.dtype]
    size = {"hf-dense": est.dense_model_bytes // 2 * scale,  # dense_model_bytes is in bf16
            "hf-sketch": est.code_bytes + (est.lut_bytes + est.dense_bytes) // 2 * scale,
            "lut-only": est.trainable_params * scale}[cfg.export.format]
    return {"format": cfg.export.format, "artifact_bytes": size}


def run(cfg, job, parent):
    from .stage import export_artifact

    eval_dir = Path(cfg.output_dir) / "eval"
    evals = [job.known_at(eval_dir) or eval_dir] if is_artifact(eval_dir) else []
    return export_artifact(parent, job.out, cfg.export, overwrite=job.overwrite, eval_artifacts=evals,
                           base=job.base_hint()).path


def headline(manifest) -> dict:
    r = manifest.results or {}
    return {k: r[k] for k in ("format", "dtype") if k in r} | (
        {"bytes": r["sizes"].get("export_bytes")} if isinstance(r.get("sizes"), dict) else {})


STAGE = Stage("export", "export", "finetune", SECTIONS, RESULT_FREE, check, plan, run, headline)
