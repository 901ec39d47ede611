"""The small interface every stage (compress, finetune, eval, export) exposes, so that `sketchtune run` and
the preflight can drive the stages without knowing their internals.

Each stage package has an ``interface`` module with one ``STAGE`` object: the config sections it reads,
the keys among them that do not change its results (used by `run`'s skip-if-current test *and* by the
stage's own resume fingerprint), ``check`` (the preflight's problem list), ``plan`` (dry-run numbers and
the artifact size the disk check needs), ``run``, ``headline`` and optionally ``estimate`` (dry-run
predictions that cost a device probe)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .artifacts import Manifest
from .config import config_hash


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
    check: Callable  # (cfg, job) -> list[str]: one line per problem, nothing written, no weights loaded
    plan: Callable  # (cfg, job) -> dict: what it will do; "artifact_bytes" for the disk check
    run: Callable  # (cfg, job, parent manifest | None) -> artifact path
    headline: Callable  # (manifest) -> dict: the few numbers a person wants
    # (cfg) -> dict: predictions only a dry run shows, too slow for every run's preflight (a device probe)
    estimate: Callable | None = None

    def results_config(self, config: dict) -> dict:
        return results_config(self.sections, self.result_free, config)

    def fingerprint(self, config: dict) -> str:
        return fingerprint(self.sections, self.result_free, config)


def results_config(sections: tuple[str, ...], result_free: dict[str, tuple[str, ...]], config: dict) -> dict:
    """The part of a resolved config (``RunConfig.model_dump`` or a manifest's) that decides a stage's
    results: its ``sections``, less their ``result_free`` keys (a stage's ``settings.SECTIONS`` and
    ``settings.RESULT_FREE``; its own code uses these functions, its ``STAGE`` the methods above)."""
    picked = {}
    for name in sections:
        value = config.get(name)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in result_free.get(name, ())}
        picked[name] = value
    return picked


def fingerprint(sections: tuple[str, ...], result_free: dict[str, tuple[str, ...]], config: dict) -> str:
    return config_hash(results_config(sections, result_free, config))


STAGE_NAMES = ("compress", "finetune", "eval", "export")
_PACKAGES = {"compress": "compress", "finetune": "finetune", "eval": "evaluate", "export": "export"}


def get(name: str) -> Stage:
    return importlib.import_module(f"sketchtune_cli.{_PACKAGES[name]}.interface").STAGE
