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

from . import preflight, stages
from .artifacts import Manifest, dir_bytes, ensure_verified, is_artifact, partial_dir, read_manifest
from .config import RunConfig
from .errors import PreflightError, UserError

log = logging.getLogger(__name__)

STAGES = stages.STAGE_NAMES
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

def stage_fingerprint(stage: str, config: dict) -> str:
    """Hash of the config that decides ``stage``'s results (its sections, less its result-free keys)."""
    return stages.get(stage).fingerprint(config)


def is_current(stage: str, existing: Manifest, cfg: RunConfig, parent: Manifest | None) -> bool:
    if stage_fingerprint(stage, existing.config) != stage_fingerprint(stage, cfg.model_dump(mode="json")):
        return False
    if parent is None:
        return True
    return bool(existing.parent) and existing.parent.get("content_hash") == parent.content_hash


def demo_eval_file(cfg: RunConfig) -> Path | None:
    """Where the run writes the demo's held-out split: with the built-in demo data and no eval data dir."""
    if cfg.data.path != "demo" or cfg.eval.data_dir:
        return None
    return Path(cfg.output_dir) / "data" / DEMO_TASK_FOLDER / "test.json"


def prepare_demo_eval_data(cfg: RunConfig) -> RunConfig:
    """With the built-in demo data and no eval data dir, write the demo's held-out split where the
    paper-protocol math task can read it (``output_dir/data/demo_arith/test.json``)."""
    target = demo_eval_file(cfg)
    if target is None:
        return cfg
    from .finetune.demo_data import demo_records

    records = demo_records("test", n=cfg.eval.limit or 200, seed=cfg.train.seed)
    text = json.dumps(records, indent=1)
    if not target.is_file() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return with_demo_eval_dir(cfg)


def select_stages(from_stage: str | None, until: str | None) -> list[str]:
    for name in (from_stage, until):
        if name is not None and name not in STAGES:
            raise UserError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    first = STAGES.index(from_stage) if from_stage else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise UserError(f"--from {from_stage} comes after --until {until}")
    return list(STAGES[first : last + 1])


@dataclass
class Step:
    """What `run` will do with one stage, decided before anything runs."""
    stage: str
    out: Path
    action: str  # "run" | "resume" | "skip"
    existing: Manifest | None = None


def parent_manifest(cfg: RunConfig, name: str, known: dict[str, Manifest], verify: bool) -> Manifest | None:
    """Stage ``name``'s parent manifest (None if it has none): ``known``'s, else read into it (UserError if missing)."""
    parent = stages.get(name).parent
    if parent is None or parent in known:
        return known.get(parent)
    path = stage_dir(cfg, parent)
    if not is_artifact(path):
        raise UserError(f"stage {name} needs {path}; run `--from {parent}` first")
    known[parent] = read_manifest(path, stage=stages.get(parent).artifact, verify=verify)
    return known[parent]


def keeps_existing(cfg: RunConfig, stage: stages.Stage, existing: Manifest, parent: Manifest | None,
                   overwrite: bool) -> bool:
    """Whether the stage's existing artifact is kept (current); if not, UserError unless ``overwrite``."""
    if is_current(stage.name, existing, cfg, parent):
        return True
    if not overwrite:
        raise UserError(f"{existing.path} was made with another config or from another {stage.parent or 'model'}; "
                        f"pass --overwrite to re-run {stage.name}, or set another output_dir")
    return False


def plan_stages(cfg: RunConfig, names: list[str], overwrite: bool = False) -> tuple[list[Step], list[str]]:
    """Which stages run, resume or are skipped (up to date), from manifests alone (no checksums); problems:
    a missing parent artifact, or an artifact made with another config without --overwrite."""
    steps: list[Step] = []
    problems: list[str] = []
    for name in names:
        stage, out = stages.get(name), stage_dir(cfg, name)
        kept = {s.stage: s.existing for s in steps if s.action == "skip"}
        # a parent this plan runs is not made yet: its child's artifact is judged only once it has run
        parent_pending = stage.parent in {s.stage for s in steps} and stage.parent not in kept
        try:
            parent = None if parent_pending else parent_manifest(cfg, name, kept, verify=False)
        except UserError as e:
            problems.append(str(e))
            parent, parent_pending = None, True  # so the checks below do not repeat it
        step = Step(name, out, "resume" if partial_dir(out).exists() else "run")
        if is_artifact(out):
            try:
                existing = read_manifest(out, stage=stage.artifact, verify=False)
                if not parent_pending and keeps_existing(cfg, stage, existing, parent, overwrite):
                    step = Step(name, out, "skip", existing)
            except UserError as e:
                problems.append(str(e))
        steps.append(step)
    return steps, problems


def with_demo_eval_dir(cfg: RunConfig) -> RunConfig:
    """``cfg`` as the stages see it once ``prepare_demo_eval_data`` has run (nothing written here)."""
    target = demo_eval_file(cfg)
    if target is None:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.eval.data_dir = str(target.parent.parent)
    return cfg


def _checked_config(cfg: RunConfig) -> RunConfig:
    """The config the preflight checks: the demo task's file is made by the run itself, so it is not
    required to exist yet."""
    if demo_eval_file(cfg) is None:
        return cfg
    cfg = with_demo_eval_dir(cfg)
    cfg.eval.tasks = [t for t in cfg.eval.tasks if t.lower() not in ("demo_arith", "st_demo_arith")]
    return cfg


def preflight_stages(cfg: RunConfig, names: list[str], overwrite: bool = False) -> tuple[list[Step], dict, list[str]]:
    """(steps, plans of the stages that will run, every problem): what `run` and `run --dry-run` check
    before any stage starts."""
    steps, problems = plan_stages(with_demo_eval_dir(cfg), names, overwrite)
    to_run = [s for s in steps if s.action != "skip"]
    made_here = {s.stage for s in to_run}
    checks = []
    for step in to_run:
        parent = stages.get(step.stage).parent
        inputs = (str(stage_dir(cfg, parent)),) if parent else ()
        # an input made earlier in this run, or missing (plan_stages said so), is not checked again
        pending = parent in made_here or bool(parent and not is_artifact(inputs[0]))
        checks.append((stages.get(step.stage), stages.Job(step.out, overwrite=overwrite, resume=step.action == "resume",
                                                          inputs=inputs, pending=pending, check_output=False)))
    plans, found = preflight.collect(checks, _checked_config(cfg))
    return steps, dict(zip((s.stage for s in to_run), plans)), preflight.unique(problems + found)


def run_stages(cfg: RunConfig, names: list[str], overwrite: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> list[StageReport]:
    _, _, problems = preflight_stages(cfg, names, overwrite)
    if problems:
        raise PreflightError(problems)
    cfg = prepare_demo_eval_data(cfg)
    if not cfg.logging.run_name:  # one tracker run name for every stage: output_dir's name
        cfg = cfg.model_copy(deep=True)
        cfg.logging.run_name = Path(cfg.output_dir).resolve().name
    reports: list[StageReport] = []
    # every artifact this run has read (verified) or written, by stage name: each is hashed once, and later
    # stages get these manifests rather than re-reading (and re-hashing) the directories
    known: dict[str, Manifest] = {}
    for name in names:
        stage = stages.get(name)
        out = stage_dir(cfg, name)
        parent = parent_manifest(cfg, name, known, verify=True)
        if on_stage:
            on_stage(name)
        if is_artifact(out):
            existing = read_manifest(out, stage=stage.artifact, verify=False)
            if keeps_existing(cfg, stage, existing, parent, overwrite):
                known[name] = ensure_verified(existing)  # hashed only when it is kept
                log.info("%s: %s is up to date, skipping", name, out)
                reports.append(StageReport(name, "skipped", out, 0.0, stage.headline(existing)))
                continue
        resume = partial_dir(out).exists()
        if resume:
            log.info("%s: resuming the interrupted run in %s", name, partial_dir(out))
        start = time.perf_counter()
        job = stages.Job(out, overwrite=overwrite, resume=resume, known=tuple(known.values()))
        path = stage.run(cfg, job, parent)
        manifest = read_manifest(path, stage=stage.artifact, verify=False)
        manifest.verified = True  # its writer hashed every file just now, in this run
        known[name] = manifest
        reports.append(StageReport(name, "resumed" if resume else "ran", Path(path),
                                   time.perf_counter() - start, stage.headline(manifest)))
    return reports


# ---- the summary ------------------------------------------------------------------------------------

def summary_rows(reports: list[StageReport]) -> list[tuple[str, str, str, str, str]]:
    from .estimate import human_bytes

    rows = []
    for rep in reports:
        detail = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.headline.items())
        rows.append((rep.stage, rep.status, str(rep.path), human_bytes(dir_bytes(rep.path)), f"{rep.seconds:.0f}s", detail))
    return rows
