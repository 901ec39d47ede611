"""The small interface every stage (compress, finetune, eval, export) exposes, so that `sketchtune run` and
the preflight can drive the stages without knowing their internals.

Each stage package has an ``interface`` module with one ``STAGE`` object: the config sections it reads,
the keys among them that do not change its results (used by `run`'s skip-if-current test *and* by the
stage's own resume fingerprint), ``check`` (the preflight's problem list), ``plan`` (dry-run numbers and
the artifact size the disk check needs), ``run``, ``headline`` and optionally ``estimate`` (dry-run
predictions that cost a device probe).

A stage sees only its own sections: ``check``, ``plan``, ``run`` and ``estimate`` take a ``StageConfig``
holding them plus the run-wide ``output_dir`` and ``logging``; reading any other section is an error. The
one thing a stage learns from an earlier stage of the same run is the sketch it will make: a plan's
``"sketch"`` (``SketchEstimate.to_dict()``) reaches the later stages that wait for it as
``Job.planned_sketch``, so they can size their own artifacts in a dry run."""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from .artifacts import Manifest

RUN_WIDE = ("output_dir", "logging")  # every stage may read where `run` writes and how to log


class StageConfig:
    """The part of a run's config one stage reads: its sections plus ``RUN_WIDE``, by attribute, as on
    ``config.RunConfig`` (the same section objects, not copies)."""

    def __init__(self, values: dict[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"this stage's config has no {name!r} (it holds {', '.join(values)}); a stage that "
                             f"needs another section declares it in its settings.SECTIONS")

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError("a StageConfig is read-only; model_copy(deep=True) it and change the sections")

    def view(self, sections: tuple[str, ...]) -> "StageConfig":
        return StageConfig({name: getattr(self, name) for name in (*sections, *RUN_WIDE)})

    def model_copy(self, deep: bool = False) -> "StageConfig":
        return StageConfig({name: value.model_copy(deep=deep) if isinstance(value, BaseModel) else value
                            for name, value in self._values.items()})

    def section_dict(self, *names: str) -> dict:
        """The named sections as JSON-ready values (what manifests record)."""
        return {n: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
                for n in names for v in [getattr(self, n)]}


@dataclass(frozen=True)
class Job:
    """One stage run as a command or `sketchtune run` asks for it (what the config does not say)."""

    out: Path
    overwrite: bool = False
    resume: bool = False
    inputs: tuple[str, ...] = ()  # artifacts or models it reads; empty: the stage finds them from the config
    pending: bool = False  # its input is made by an earlier stage of this `sketchtune run`
    base: str | None = None  # --base: where a fine-tune's (or lut-only export's) base sketch moved
    check_output: bool = True  # refuse an existing output (`run` decides skip/overwrite itself)
    # artifacts `sketchtune run` has already read (verified) or written in this process: a stage takes its
    # inputs from here rather than reading (and hashing) the directories again
    known: tuple[Manifest, ...] = ()
    # pending: the sketch an earlier stage of this run will make, as its plan describes it (a dry run's sizes)
    planned_sketch: dict | None = None

    def known_at(self, path: str | Path) -> Manifest | None:
        """The known artifact at ``path``, if any."""
        where = Path(path).resolve()
        return next((m for m in self.known if Path(m.path).resolve() == where), None)

    def base_hint(self) -> str | Manifest | None:
        """--base if given, else a known sketch (``loading`` uses it only if it is the recorded base)."""
        return self.base or next((m for m in self.known if m.stage == "sketch"), None)


@dataclass(frozen=True)
class Stage:
    name: str  # as `sketchtune run --from/--until` calls it
    artifact: str  # the stage its manifest records
    parent: str | None  # the stage whose artifact it consumes
    sections: tuple[str, ...]  # config sections it reads
    result_free: dict[str, tuple[str, ...]]  # keys of those sections that change speed/logging, not results
    # the stage's functions, each given the StageConfig of its sections (the methods below make it):
    check_fn: Callable  # (cfg, job) -> list[str]: one line per problem, nothing written, no weights loaded
    plan_fn: Callable  # (cfg, job) -> dict: what it will do; "artifact_bytes" for the disk check
    run_fn: Callable  # (cfg, job, parent manifest | None) -> artifact path
    headline: Callable  # (manifest) -> dict: the few numbers a person wants
    # (cfg) -> dict: predictions only a dry run shows, too slow for every run's preflight (a device probe)
    estimate_fn: Callable | None = None

    def view(self, cfg) -> StageConfig:
        """``cfg`` (a ``RunConfig`` or a wider view) cut to what this stage reads."""
        return cfg.view(self.sections)

    def check(self, cfg, job: Job) -> list[str]:
        return self.check_fn(self.view(cfg), job)

    def plan(self, cfg, job: Job) -> dict:
        return self.plan_fn(self.view(cfg), job)

    def run(self, cfg, job: Job, parent: Manifest | None):
        return self.run_fn(self.view(cfg), job, parent)

    def estimate(self, cfg) -> dict | None:
        return self.estimate_fn(self.view(cfg)) if self.estimate_fn else None

    def fingerprint(self, config: dict) -> str:
        return fingerprint(self.sections, self.result_free, config)


def results_config(sections: tuple[str, ...], result_free: dict[str, tuple[str, ...]], config: dict) -> dict:
    """The part of a resolved config (``RunConfig.model_dump`` or a manifest's) that decides a stage's
    results: its ``sections``, less their ``result_free`` keys (a stage's ``settings.SECTIONS`` and
    ``settings.RESULT_FREE``; its own code uses these functions, its ``STAGE`` ``Stage.fingerprint``)."""
    picked = {}
    for name in sections:
        value = config.get(name)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in result_free.get(name, ())}
        picked[name] = value
    return picked


def fingerprint(sections: tuple[str, ...], result_free: dict[str, tuple[str, ...]], config: dict) -> str:
    return config_hash(results_config(sections, result_free, config))


def config_hash(sections: dict) -> str:
    """Stable hash of resolved config sections: whether an artifact is current, and a resume's identity."""
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]


STAGE_NAMES = ("compress", "finetune", "eval", "export")
_PACKAGES = {"compress": "compress", "finetune": "finetune", "eval": "evaluate", "export": "export"}


def get(name: str) -> Stage:
    return importlib.import_module(f"sketchtune_cli.{_PACKAGES[name]}.interface").STAGE
