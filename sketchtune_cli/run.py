"""`sketchtune run`: compress -> finetune -> eval -> export from one config, into ``output_dir/<stage>/``.

A stage whose artifact already exists with the same resolved config (and the same parent) is skipped; an
interrupted stage (``<stage>.partial``) is resumed; an artifact made with another config is never
overwritten silently (``--overwrite`` re-runs it)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .artifacts import Manifest, is_artifact, partial_dir, read_manifest
from .config import RunConfig, config_hash
from .errors import UserError

log = logging.getLogger(__name__)

STAGES = ("compress", "finetune", "eval", "export")
DEMO_TASK_FOLDER = "demo_arith"


@dataclass
class StageReport:
    stage: str
    status: str  # "ran" | "resumed" | "skipped"
    path: Path
    seconds: float
    headline: dict = field(default_factory=dict)


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage


# ---- what makes an existing artifact current -------------------------------------------------------

# Per stage: the config sections it depends on, and keys that only change speed/logging (ignored).
STAGE_SECTIONS = {
    "compress": (("model", "compress"), {"compress": ("device", "offload_activations")}),
    "finetune": (("model", "data", "train"), {"train": ("base", "save_every", "save_every_minutes", "eval_every", "log_every",
                                                       "trackers")}),
    "eval": (("model", "eval"), {"eval": ("batch_size",)}),
    "export": (("export",), {}),
}


def stage_fingerprint(stage: str, config: dict) -> str:
    sections, ignored = STAGE_SECTIONS[stage]
    picked = {}
    for name in sections:
        value = config.get(name)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ignored.get(name, ())}
        picked[name] = value
    return config_hash(picked)


def is_current(stage: str, existing: Manifest, cfg: RunConfig, parent: Manifest | None) -> bool:
    if stage_fingerprint(stage, existing.config) != stage_fingerprint(stage, cfg.model_dump(mode="json")):
        return False
    if parent is None:
        return True
    return bool(existing.parent) and existing.parent.get("content_hash") == parent.content_hash


# ---- the stages -------------------------------------------------------------------------------------

def _compress(cfg: RunConfig, out: Path, parent: Manifest | None, resume: bool, overwrite: bool) -> Path:
    from .compress.stage import run_compress

    return run_compress(cfg, out, resume=resume, overwrite=overwrite, plot=cfg.logging.plots)


def _finetune(cfg: RunConfig, out: Path, parent: Manifest | None, resume: bool, overwrite: bool) -> Path:
    from .finetune.stage import run_finetune

    cfg = cfg.model_copy(deep=True)
    cfg.train.base = str(parent.path)
    return run_finetune(cfg, out, resume=resume, overwrite=overwrite)


def _eval(cfg: RunConfig, out: Path, parent: Manifest | None, resume: bool, overwrite: bool) -> Path:
    from .evaluate.pipeline import run_eval

    outcome = run_eval([str(parent.path)], cfg, out, overwrite=overwrite)
    return outcome.path


def _export(cfg: RunConfig, out: Path, parent: Manifest | None, resume: bool, overwrite: bool) -> Path:
    from .export.run import export_artifact

    evals = [stage_dir(cfg, "eval")] if is_artifact(stage_dir(cfg, "eval")) else []
    return export_artifact(parent.path, out, cfg.export, overwrite=overwrite, eval_artifacts=evals,
                           config=cfg.section_dict("export")).path


RUNNERS: dict[str, Callable] = {"compress": _compress, "finetune": _finetune, "eval": _eval, "export": _export}
# The artifact each stage consumes, and the stage name each artifact's manifest records.
PARENT_STAGE = {"compress": None, "finetune": "compress", "eval": "finetune", "export": "finetune"}
ARTIFACT_STAGE = {"compress": "sketch", "finetune": "finetune", "eval": "eval", "export": "export"}


def prepare_demo_eval_data(cfg: RunConfig) -> RunConfig:
    """With the built-in demo data and no eval data dir, write the demo's held-out split where the
    paper-protocol math task can read it (``output_dir/data/demo_arith/test.json``)."""
    if cfg.data.path != "demo" or cfg.eval.data_dir:
        return cfg
    from .finetune.demo_data import demo_records

    target = Path(cfg.output_dir) / "data" / DEMO_TASK_FOLDER / "test.json"
    records = demo_records("test", n=cfg.eval.limit or 200, seed=cfg.train.seed)
    text = json.dumps(records, indent=1)
    if not target.is_file() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    cfg = cfg.model_copy(deep=True)
    cfg.eval.data_dir = str(target.parent.parent)
    return cfg


def select_stages(from_stage: str | None, until: str | None) -> list[str]:
    for name in (from_stage, until):
        if name is not None and name not in STAGES:
            raise UserError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    first = STAGES.index(from_stage) if from_stage else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise UserError(f"--from {from_stage} comes after --until {until}")
    return list(STAGES[first : last + 1])


def run_pipeline(cfg: RunConfig, stages: list[str], overwrite: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> list[StageReport]:
    cfg = prepare_demo_eval_data(cfg)
    if not cfg.logging.run_name:  # one tracker run name for every stage: output_dir's name
        cfg = cfg.model_copy(deep=True)
        cfg.logging.run_name = Path(cfg.output_dir).resolve().name
    reports: list[StageReport] = []
    for stage in stages:
        out = stage_dir(cfg, stage)
        parent_stage = PARENT_STAGE[stage]
        parent = None
        if parent_stage:
            parent_path = stage_dir(cfg, parent_stage)
            if not is_artifact(parent_path):
                raise UserError(f"stage {stage} needs {parent_path}; run `--from {parent_stage}` first")
            parent = read_manifest(parent_path, stage=ARTIFACT_STAGE[parent_stage])
        if on_stage:
            on_stage(stage)
        if is_artifact(out):
            existing = read_manifest(out, stage=ARTIFACT_STAGE[stage])
            if is_current(stage, existing, cfg, parent):
                log.info("%s: %s is up to date, skipping", stage, out)
                reports.append(StageReport(stage, "skipped", out, 0.0, headline(stage, existing)))
                continue
            if not overwrite:
                raise UserError(f"{out} was made with another config or from another {parent_stage or 'model'}; "
                                f"pass --overwrite to re-run {stage}, or set another output_dir")
        resume = partial_dir(out).exists()
        if resume:
            log.info("%s: resuming the interrupted run in %s", stage, partial_dir(out))
        start = time.perf_counter()
        path = RUNNERS[stage](cfg, out, parent, resume, overwrite)
        manifest = read_manifest(path, stage=ARTIFACT_STAGE[stage], verify=False)
        reports.append(StageReport(stage, "resumed" if resume else "ran", Path(path),
                                   time.perf_counter() - start, headline(stage, manifest)))
    return reports


# ---- the summary ------------------------------------------------------------------------------------

def headline(stage: str, manifest: Manifest) -> dict:
    """The few numbers a person wants from each stage."""
    r = manifest.results or {}
    if stage == "compress":
        s = r.get("summary", {})
        return {k: s[k] for k in ("layers", "mean_rel_error", "max_rel_error") if k in s} | (
            {"wall_s": r["wall_seconds"]} if "wall_seconds" in r else {})
    if stage == "finetune":
        keys = ("steps", "first_loss", "final_loss", "eval_loss", "trainable_params", "tokens_per_s")
        return {k: r[k] for k in keys if k in r}
    if stage == "eval":
        return _eval_scores(r)
    if stage == "export":
        return {k: r[k] for k in ("format", "dtype") if k in r} | (
            {"bytes": r["sizes"].get("export_bytes")} if isinstance(r.get("sizes"), dict) else {})
    return {}


def _eval_scores(results: dict) -> dict:
    models = results.get("models") or []
    if models and isinstance(models[0], dict):
        scores = models[0].get("scores") or {}
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in scores.items()}
    return {}


def summary_rows(reports: list[StageReport]) -> list[tuple[str, str, str, str, str]]:
    from .estimate import human_bytes

    rows = []
    for rep in reports:
        size = sum(p.stat().st_size for p in rep.path.rglob("*") if p.is_file()) if rep.path.exists() else 0
        detail = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.headline.items())
        rows.append((rep.stage, rep.status, str(rep.path), human_bytes(size), f"{rep.seconds:.0f}s", detail))
    return rows
