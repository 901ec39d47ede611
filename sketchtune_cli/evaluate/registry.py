"""The catalogue of bundled paper-protocol tasks and how the names users type map onto them.

Rules (also in ``sketchtune eval --help``):
- ``st_<name>`` (e.g. ``st_gsm8k``, ``st_arc_easy_ll``) and the groups ``st_math``, ``st_commonsense``,
  ``st_commonsense_ll`` (aliases ``math``, ``commonsense``, ``commonsense_ll``) are always the paper's protocol
  over LLM-Adapters files: from the data directory when one is known, else fetched from the LLM-Adapters
  repository into the cache and verified against the pinned hashes (:mod:`sketchtune_cli.llm_adapters`).
- A bare dataset name (``gsm8k``, ``arc_easy``, ``boolq_ll``...) means the paper's protocol when a data
  directory is known (``--data-dir``, ``eval.data_dir`` or ``$SKETCHTUNE_DATA``), else lm-eval's own task
  of that name. Names lm-eval does not have (``svamp``, ``addsub``...) are always ours.
- ``lm:<name>`` is always lm-eval's own task or group.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class PaperTask:
    name: str  # lm-eval task name, st_*
    folder: str  # LLM-Adapters folder under the data dir
    template: str  # bundled template YAML (tasks/_st_<template>.yaml)
    group: str

    def data_file(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / self.folder / "test.json"


# (bare name, LLM-Adapters folder)
MATH = [("gsm8k", "gsm8k"), ("svamp", "SVAMP"), ("addsub", "AddSub"), ("multiarith", "MultiArith"),
        ("singleeq", "SingleEq"), ("aqua", "AQuA"), ("mawps", "mawps")]
COMMONSENSE = [("boolq", "boolq"), ("piqa", "piqa"), ("social_i_qa", "social_i_qa"), ("hellaswag", "hellaswag"),
               ("winogrande", "winogrande"), ("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge"),
               ("openbookqa", "openbookqa")]
SYNONYMS = {"siqa": "social_i_qa", "social_iqa": "social_i_qa", "obqa": "openbookqa", "arc_e": "arc_easy",
            "arc_c": "arc_challenge"}
GROUP_ALIASES = {"math": "st_math", "commonsense": "st_commonsense", "commonsense_ll": "st_commonsense_ll"}


def _catalogue() -> dict[str, PaperTask]:
    tasks = {}
    for bare, folder in MATH:
        tasks[f"st_{bare}"] = PaperTask(f"st_{bare}", folder, "aqua" if bare == "aqua" else "math", "st_math")
    for bare, folder in COMMONSENSE:
        tasks[f"st_{bare}"] = PaperTask(f"st_{bare}", folder, "choice", "st_commonsense")
        tasks[f"st_{bare}_ll"] = PaperTask(f"st_{bare}_ll", folder, "choice_ll", "st_commonsense_ll")
    # The demo's held-out arithmetic problems (finetune/demo_data.py; `sketchtune run --config demo` writes
    # them to <data-dir>/demo_arith/test.json): scored like the paper's math tasks, in no paper group.
    tasks["st_demo_arith"] = PaperTask("st_demo_arith", "demo_arith", "math", "")
    return tasks


PAPER_TASKS = _catalogue()
GROUPS = {g: [t.name for t in PAPER_TASKS.values() if t.group == g]
          for g in ("st_math", "st_commonsense", "st_commonsense_ll")}


@dataclass(frozen=True)
class Selection:
    """What to run: paper tasks (expanded from groups, in order) and lm-eval's own task names."""
    paper: list[str]
    harness: list[str]
    requested: list[str]  # the names after resolution, one per entry the user gave (for table rows)


def _paper_name(name: str, have_data_dir: bool) -> str | list[str] | None:
    """The st_* task or group a typed name stands for, or None if it is lm-eval's."""
    low = name.lower()
    if low in GROUP_ALIASES:
        return GROUP_ALIASES[low]
    if low in GROUPS or low in PAPER_TASKS:
        return low
    ll = low.endswith("_ll")
    bare = SYNONYMS.get(low[:-3] if ll else low, low[:-3] if ll else low)
    key = f"st_{bare}_ll" if ll else f"st_{bare}"
    if key in PAPER_TASKS and (have_data_dir or ll or bare not in LM_EVAL_NAMES):
        return key
    return None


# Bare names that lm-eval also ships; without a data dir they go to lm-eval.
LM_EVAL_NAMES = {"gsm8k", "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "arc_easy",
                 "arc_challenge", "openbookqa"}
# lm-eval's own spelling for a few of ours (``social_i_qa`` is ``social_iqa`` there).
LM_EVAL_SPELLING = {"social_i_qa": "social_iqa", "siqa": "social_iqa"}


def select(names: list[str], have_data_dir: bool) -> Selection:
    paper, harness, requested = [], [], []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        forced = name.lower().startswith("lm:")  # lm:NAME is always lm-eval's own
        mapped = None if forced else _paper_name(name, have_data_dir)
        if mapped is None:
            target = name[3:] if forced else LM_EVAL_SPELLING.get(name.lower(), name)
            harness.append(target)
            requested.append(target)
            continue
        members = GROUPS.get(mapped, [mapped])
        paper += [m for m in members if m not in paper]
        requested.append(mapped)
    if not requested:
        raise UserError("no tasks given; pass --tasks, e.g. --tasks gsm8k,arc_easy")
    # lm-eval refuses a task listed twice: a task also inside a requested group runs (and shows) once
    in_groups = {t for g in requested if g in GROUPS for t in GROUPS[g]}
    return Selection(paper, harness, [n for n in requested if n not in in_groups])


DATA_DIR_HINT = "pass --data-dir DIR (DIR/<Dataset>/test.json), set eval.data_dir or $SKETCHTUNE_DATA"


def check_data(paper: list[str], data_dir: str | Path | None) -> None:
    """Fail early, in one line, when a paper task's file is absent from a given data dir."""
    if paper and data_dir is None:
        raise UserError(f"task {paper[0]} needs LLM-Adapters test files: {DATA_DIR_HINT}")
    for name in paper:
        path = PAPER_TASKS[name].data_file(data_dir)
        if not path.is_file():
            raise UserError(f"task {name}: data file {path} not found (expected <data-dir>/{PAPER_TASKS[name].folder}/test.json)")
        check_test_records(name, path)


def repo_test_file(name: str) -> str:
    """Where a paper task's test file lives in the LLM-Adapters repository."""
    return f"dataset/{PAPER_TASKS[name].folder}/test.json"


def fetch_test_file(name: str) -> Path:
    """A paper task's test file, fetched on first use from the LLM-Adapters repository into the cache and
    verified against the pinned hash (:mod:`sketchtune_cli.llm_adapters`)."""
    from ..llm_adapters import fetch_path

    return fetch_path(repo_test_file(name), instead=f"for task {name}, {DATA_DIR_HINT}").path


def resolve_data_dir(paper: list[str], data_dir: str | Path | None) -> str | None:
    """The data dir the paper tasks read: ``data_dir`` when one is given (it must hold every file: it
    works offline and takes precedence), else the cache of verified LLM-Adapters files, fetched now."""
    if not paper or data_dir is not None:
        check_data(paper, data_dir)
        return None if data_dir is None else str(data_dir)
    from ..llm_adapters import local_dir

    for name in paper:
        fetch_test_file(name)
    return str(local_dir() / "dataset")


def task_problems(tasks: list[str], data_dir: str | None) -> list[str]:
    """For a preflight: every problem with ``tasks``, one line each: unknown names, and paper tasks whose
    test file is neither in ``data_dir`` nor fetchable and verifiable (those are fetched into the cache
    now: they are small). Loads no model."""
    try:
        sel = select(tasks, have_data_dir=data_dir is not None)
    except UserError as e:
        return [str(e)]
    # st_* is this project's namespace: a name there that is not ours is unknown without asking lm-eval
    ours = [n for n in sel.harness if n.lower().startswith("st_")]
    problems = [f"unknown task {n!r}: not a bundled paper-protocol task (see `sketchtune eval --help`)" for n in ours]
    if len(ours) < len(sel.harness):
        problems += _harness_problems([n for n in sel.harness if n not in ours])
    for name in sel.paper:
        try:
            resolve_data_dir([name], data_dir)
        except UserError as e:
            problems.append(str(e))
    return problems


def _harness_problems(harness: list[str]) -> list[str]:
    """lm-eval's own task names it does not know (its datasets are not loaded here)."""
    import tempfile

    from .runner import make_task_manager, unknown_tasks

    with tempfile.TemporaryDirectory(prefix="sketchtune-tasks-") as tmp:
        return unknown_tasks(make_task_manager(tmp, harness), harness)


def check_test_records(name: str, path: Path) -> None:
    """The test file must be a non-empty JSON list of objects with ``instruction`` and ``answer``: lm-eval's
    own error for anything else comes after the model has loaded, as a many-line DatasetGenerationError."""
    import json

    from ..textfiles import read_text

    try:
        records = json.loads(read_text(path, "utf-8", "data file"))
    except json.JSONDecodeError as e:
        raise UserError(f"task {name}: {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(records, list) or not records:
        what = "an empty list" if records == [] else f"a JSON {type(records).__name__}"
        raise UserError(f"task {name}: {path} holds {what}; it must be a JSON list of records "
                        f"(instruction, answer)")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) or "answer" not in rec:
            raise UserError(f"task {name}: record {i} of {path} lacks a string `instruction` or an `answer`")
