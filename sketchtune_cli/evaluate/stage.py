"""The eval stage: resolve tasks, evaluate each model in turn with lm-eval, write one eval artifact.

Kept apart from the Typer command so tests and ``sketchtune run`` can call it directly.
"""
from __future__ import annotations

import gc
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import processes
from ..artifacts import Manifest, check_output, sha256_file, write_artifact
from ..stages import StageConfig
from . import registry, report, runner, taskgen

log = logging.getLogger(__name__)


@dataclass
class Evaluated:
    label: str
    kind: str
    manifest: Manifest | None
    results: dict[str, Any]


@dataclass
class EvalOutcome:
    path: Path | None  # None on data-parallel ranks other than 0
    models: list[report.ModelScores] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)


def data_dir_of(cfg: StageConfig) -> str | None:
    """``eval.data_dir`` (``--data-dir``), else ``$SKETCHTUNE_DATA``."""
    return cfg.eval.data_dir or os.environ.get("SKETCHTUNE_DATA") or None


def evaluate_one(spec: str | Manifest, tasks: list[str], task_manager, cfg: StageConfig,
                 base: str | Manifest | None = None) -> Evaluated:
    """Build one model (sketch, fine-tune, export or plain model) and run lm-eval on it."""
    from ..loading import load_any

    dtype = None if cfg.model.dtype == "auto" else cfg.model.dtype
    loaded = load_any(spec, device=runner.eval_device(), dtype=dtype, base=base)
    log.info("evaluating %s (%s) on %s", loaded.label, loaded.kind, ", ".join(tasks))
    lm = runner.make_lm(loaded.model, loaded.tokenizer, cfg.eval.batch_size)
    results = runner.run_lm_eval(lm, tasks, task_manager, cfg.eval)
    out = Evaluated(loaded.label, loaded.kind, loaded.manifest, results)
    del lm, loaded
    _free_memory()
    return out


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_eval(specs: list[str | Manifest], cfg: StageConfig, out: Path, overwrite: bool = False,
             base: str | Manifest | None = None) -> EvalOutcome:
    sel = registry.select(cfg.eval.tasks, have_data_dir=data_dir_of(cfg) is not None)
    data_dir = registry.resolve_data_dir(sel.paper, data_dir_of(cfg))  # fetches verified files if none given
    main = processes.state().is_main_process
    if main:
        check_output(out, overwrite)
    with tempfile.TemporaryDirectory(prefix="sketchtune-tasks-") as tmp:
        groups = [n for n in sel.requested if n in registry.GROUPS]
        taskgen.write_task_dir(Path(tmp), sel.paper, groups, data_dir or ".", cfg.eval.max_new_tokens)
        task_manager = runner.make_task_manager(tmp, sel.harness)
        runner.check_harness_tasks(task_manager, sel.harness)
        evaluated = [evaluate_one(s, sel.requested, task_manager, cfg, base) for s in specs]
    if not main:
        return EvalOutcome(None)
    outcome = write_eval_artifact(evaluated, cfg, out, overwrite, data_files(sel.paper, data_dir))
    log_scores(cfg, out, outcome)
    return outcome


def log_scores(cfg: StageConfig, out: Path, outcome: EvalOutcome) -> None:
    """Each task's score (and the average) to the configured trackers; several models: ``<label>/<task>``."""
    from ..tracking import StageLog

    with StageLog(cfg, "eval", out, cfg.section_dict("model", "eval")) as tracker:
        for m in outcome.models:
            prefix = f"{m.label}/" if len(outcome.models) > 1 else ""
            tracker.log({f"{prefix}{task}": score for task, score in {**m.scores, "average": m.average}.items()}, step=0)


def data_files(paper: list[str], data_dir: str | None) -> dict[str, dict[str, str]]:
    """Which test file each paper task read, with its sha256 (the files live outside the artifact)."""
    files = {name: registry.PAPER_TASKS[name].data_file(data_dir).resolve() for name in paper}
    return {name: {"path": str(p), "sha256": sha256_file(p)} for name, p in files.items()}


def _labels(evaluated: list[Evaluated]) -> list[str]:
    """Column names: what the user typed, made unique."""
    seen: dict[str, int] = {}
    labels = []
    for e in evaluated:
        n = seen[e.label] = seen.get(e.label, 0) + 1
        labels.append(e.label if n == 1 else f"{e.label} ({n})")
    return labels


def write_eval_artifact(evaluated: list[Evaluated], cfg: StageConfig, out: Path, overwrite: bool,
                        files: dict | None = None) -> EvalOutcome:
    labels = _labels(evaluated)
    models = [report.scores_of(label, e.results) for label, e in zip(labels, evaluated)]
    parent = next((e.manifest for e in evaluated if e.manifest is not None), None)
    config = cfg.section_dict("model", "eval")
    config["eval"]["data_dir"] = data_dir_of(cfg)  # as resolved (flag, config or $SKETCHTUNE_DATA)
    config["data_files"] = files or {}
    config["evaluated"] = [
        {"label": label, "kind": e.kind, "path": str(e.manifest.path.resolve()) if e.manifest else None,
         "content_hash": e.manifest.content_hash if e.manifest else None}
        for label, e in zip(labels, evaluated)
    ]
    with write_artifact(out, "eval", config, parent=parent, overwrite=overwrite) as w:
        for i, (label, e) in enumerate(zip(labels, evaluated)):
            report.write_model_results(w.path, report.slug(label, i), e.results)
        (w.path / "results.md").write_text(report.markdown_table(models))
        scores = report.scores_json(models, str(out))
        w.results.update(scores)
    return EvalOutcome(out, models, scores)
