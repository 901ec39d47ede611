"""Materialize the bundled paper-protocol tasks for one run.

The protocol lives in the bundled templates (``tasks/_st_*.yaml``); what varies per run (where the data
is, how many new tokens) is written into one tiny YAML per task in a temporary include directory that
``include:``s its template by absolute path. lm-eval then indexes only that directory.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .registry import GROUPS, PAPER_TASKS

TEMPLATE_DIR = Path(__file__).parent / "tasks"


def task_config(name: str, data_dir: str | Path, max_new_tokens: int) -> dict:
    task = PAPER_TASKS[name]
    cfg = {
        "include": str(TEMPLATE_DIR / f"_st_{task.template}.yaml"),
        "task": name,
        "dataset_kwargs": {"data_files": {"test": str(task.data_file(data_dir).resolve())}},
    }
    if task.template != "choice_ll":
        cfg["generation_kwargs"] = {"until": ["### Instruction:"], "do_sample": False,
                                    "max_gen_toks": int(max_new_tokens)}
    return cfg


def group_config(group: str) -> dict:
    """The paper averages its tasks unweighted (not by test-set size)."""
    return {
        "group": group,
        "task": GROUPS[group],
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": False}],
        "metadata": {"version": 1.0},
    }


def write_task_dir(out: Path, tasks: list[str], groups: list[str], data_dir: str | Path, max_new_tokens: int) -> Path:
    """Write the YAMLs for ``tasks`` and ``groups`` into ``out`` (an lm-eval include path)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        (out / f"{name}.yaml").write_text(yaml.safe_dump(task_config(name, data_dir, max_new_tokens), sort_keys=False))
    for group in groups:
        (out / f"{group}.yaml").write_text(yaml.safe_dump(group_config(group), sort_keys=False))
    return out
