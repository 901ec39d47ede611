"""Checks that run before any expensive work: every problem the stages about to run would hit, found from
the config and the file system alone (no model weights loaded), reported all at once.

Each stage's interface (``stages.Stage.check``) lists the problems of its own inputs; this module holds the
checks several stages share (model spec, output directory, free disk, device) and ``require``, which runs
them for one or more stages and raises one ``PreflightError`` listing them all."""
from __future__ import annotations

import dataclasses
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

from .artifacts import check_output, existing_ancestor, is_artifact, read_manifest, resolve_ref, writable_problem
from .errors import PreflightError, UserError


def problem_of(fn, *args, **kwargs) -> list[str]:
    """``fn``'s UserError as a one-item problem list (no error: no problem)."""
    try:
        fn(*args, **kwargs)
    except UserError as e:
        return [str(e)]
    return []


# ---- the model -------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _model_config(spec: str):
    from .models import load_model_config

    return load_model_config(spec)  # aliases: bundled shapes, offline; others: config.json / GGUF header


def model_problems(spec: str) -> list[str]:
    """The model spec resolves (alias, local directory, .gguf, or a Hub id whose config can be read; offline
    a Hub id must be in the cache). Reads a config file at most."""
    return problem_of(_model_config, spec)


def model_config(spec: str):
    """The transformers config of ``spec`` (cached), or None when it cannot be read."""
    try:
        return _model_config(spec)
    except UserError:
        return None


@lru_cache(maxsize=8)
def _estimate(spec: str, bits: int, groups_per_row: int, targets: tuple | None, ignore: tuple):
    from .estimate import estimate_sketch
    from .models import meta_model

    return estimate_sketch(meta_model(_model_config(spec)), spec, bits, groups_per_row,
                           list(targets) if targets else None, list(ignore))


def sketch_estimate(model_name: str, compress):
    """The ``estimate.SketchEstimate`` of compressing ``model_name`` with ``compress``; raises UserError
    (unreadable model, groups_per_row that does not divide a layer)."""
    return _estimate(model_name, compress.bits, compress.groups_per_row,
                     tuple(compress.targets) if compress.targets else None, tuple(compress.ignore))


# ---- outputs and disk --------------------------------------------------------------------------------------

def writable_problems(out: Path) -> list[str]:
    """``out`` can be created (``artifacts.writable_problem``), as a problem list."""
    problem = writable_problem(out)
    return [problem] if problem else []


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or would, once created)."""
    return shutil.disk_usage(existing_ancestor(Path(path))).free


def disk_problems(needs: list[tuple[Path, int]]) -> list[str]:
    """Estimated artifact sizes against free space, summed per file system."""
    by_fs: dict[int, list] = {}
    for out, size in needs:
        anchor = existing_ancestor(Path(out))
        if writable_problems(out):
            continue  # reported as such; its free space means nothing
        entry = by_fs.setdefault(anchor.stat().st_dev, [anchor, 0, []])
        entry[1] += size
        entry[2].append(str(out))
    from .estimate import human_bytes

    problems = []
    for anchor, total, outs in by_fs.values():
        free = free_bytes(anchor)
        if total > free:
            problems.append(f"not enough free disk for {', '.join(outs)}: about {human_bytes(total)} needed, "
                            f"{human_bytes(free)} free under {anchor}; free space or choose another output")
    return problems


# ---- devices -----------------------------------------------------------------------------------------------

def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device_problems(settings: dict[str, str]) -> list[str]:
    """Every device key (``{"compress.device": "cuda", ...}``) names a device this machine has."""
    return [f"{key}={value} but this machine has no CUDA device; set {key}=auto or cpu"
            for key, value in settings.items() if str(value).startswith("cuda") and not cuda_available()]


# ---- inputs that are artifacts ---------------------------------------------------------------------------

def artifact_problems(path: str | Path, stage, base: str | Path | None = None) -> list[str]:
    """An artifact input: a manifest of the right stage whose parent (if it needs one) can be found by
    its recorded path or ``base``. Checksums are verified later, when the stage reads the files."""
    try:
        manifest = read_manifest(path, stage=stage, verify=False)
        if manifest.stage == "finetune":
            resolve_ref(manifest.parent or {}, manifest.path, what="base sketch", stage="sketch", override=base,
                        verify=False)
        elif manifest.stage == "export" and (Path(path) / "adapter_config.json").is_file():
            from .loading import base_sketch_of

            base_sketch_of(path, base, verify=False)
    except (UserError, KeyError) as e:
        return [str(e) if isinstance(e, UserError) else f"{path}: its manifest names no parent"]
    return []


# ---- all together -------------------------------------------------------------------------------------------

def unique(problems: list[str]) -> list[str]:
    """Problems in order, each once (stages share checks: the model, the device)."""
    return list(dict.fromkeys(problems))


T = TypeVar("T")
_PASS: dict | None = None  # what `once` computed in the running `collect`; None outside one


def once(key, compute: Callable[[], T]) -> T:
    """``compute()``, called once per preflight pass for ``key`` (a stage's ``check`` and ``plan`` may both
    need, say, its data read); outside a pass, every time. Nothing outlives the pass, so a source that
    changes between passes is read again."""
    if _PASS is None:
        return compute()
    if key not in _PASS:
        _PASS[key] = compute()
    return _PASS[key]


def collect(checks: list[tuple], cfg) -> tuple[list[dict], list[str]]:
    """The preflight of ``checks`` = [(stage, job), ...]: each stage's own checks, its output, and the free
    disk its planned artifact needs. Returns (the stages' plans, every problem found)."""
    global _PASS
    outer, _PASS = _PASS, {} if _PASS is None else _PASS
    try:
        return _collect(checks, cfg)
    finally:
        _PASS = outer


def _collect(checks: list[tuple], cfg) -> tuple[list[dict], list[str]]:
    problems, plans, needs = [], [], []
    planned_sketch = None  # the sketch an earlier stage here will make (stages.py: a plan's "sketch")
    for stage, job in checks:
        if job.pending and job.planned_sketch is None and planned_sketch is not None:
            job = dataclasses.replace(job, planned_sketch=planned_sketch)
        problems += stage.check(cfg, job) + writable_problems(job.out)
        if job.check_output:  # a stage command's output: not clobbering
            problems += problem_of(check_output, Path(job.out), job.overwrite, job.resume)
        try:
            plan = stage.plan(cfg, job)
        except UserError:
            plan = {}  # its cause is among the problems already
        plans.append(plan)
        planned_sketch = plan.get("sketch", planned_sketch)
        if plan.get("artifact_bytes"):
            needs.append((job.out, plan["artifact_bytes"]))
    problems += disk_problems(needs)
    return plans, unique(problems)


def require(checks: list[tuple], cfg) -> list[dict]:
    """``collect``, raising one PreflightError that lists every problem."""
    plans, problems = collect(checks, cfg)
    if problems:
        raise PreflightError(problems)
    return plans


def estimate_of(sketch: str | Path | None, planned: dict | None = None):
    """The SketchEstimate a stage's sizes follow from: of the existing sketch artifact ``sketch`` (from the
    model and compress settings its manifest records), else the ``planned`` one (``Job.planned_sketch``: the
    compress plan of this run). None when neither is there or the model's config cannot be read."""
    from .compress.settings import CompressSettings
    from .estimate import SketchEstimate

    if sketch is None or not is_artifact(sketch):
        return SketchEstimate(**planned) if planned else None
    try:
        recorded = read_manifest(sketch, verify=False).config
        return sketch_estimate(recorded["model"]["name"], CompressSettings.model_validate(recorded.get("compress") or {}))
    except (UserError, KeyError, TypeError, ValueError):
        return None
