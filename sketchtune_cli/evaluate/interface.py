"""The eval stage behind ``stages.Stage``: artifacts or models -> one eval artifact of lm-eval scores."""
from __future__ import annotations

from .. import preflight
from ..artifacts import is_artifact
from ..stages import Stage
from .settings import RESULT_FREE, SECTIONS
from .registry import task_problems



def check(cfg, job) -> list[str]:
    from .stage import data_dir_of

    problems = task_problems(cfg.eval.tasks, data_dir_of(cfg)) if cfg.eval.tasks else []
    if not job.pending:
        for spec in job.inputs:
            problems += (preflight.artifact_problems(spec, ("sketch", "finetune", "export"), job.base)
                         if is_artifact(spec) else preflight.model_problems(spec))
    return problems


def plan(cfg, job) -> dict:
    return {"tasks": list(cfg.eval.tasks), "limit": cfg.eval.limit}


def run(cfg, job, parent):
    from .stage import run_eval

    return run_eval([parent], cfg, job.out, overwrite=job.overwrite, base=job.base_hint()).path


def headline(manifest) -> dict:
    models = (manifest.results or {}).get("models") or []
    if models and isinstance(models[0], dict):
        scores = models[0].get("scores") or {}
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in scores.items()}
    return {}


STAGE = Stage("eval", "eval", "finetune", SECTIONS, RESULT_FREE, check, plan, run, headline)
