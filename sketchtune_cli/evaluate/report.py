"""Scores out of lm-eval's results, the side-by-side table (rows tasks, columns models) and the files of an
eval artifact."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The headline metric of a task: ours report "acc"; lm-eval's gsm8k reports exact_match per filter.
PRIMARY_METRICS = ("acc,none", "exact_match,strict-match", "exact_match,flexible-extract", "exact_match,none",
                   "acc_norm,none", "f1,none")


def primary_metric(task_result: dict) -> tuple[str, float] | None:
    for key in PRIMARY_METRICS:
        value = task_result.get(key)
        if isinstance(value, (int, float)):
            return key, float(value)
    for key, value in task_result.items():  # anything numeric that is not a stderr
        if "," in key and "stderr" not in key and isinstance(value, (int, float)):
            return key, float(value)
    return None


@dataclass
class ModelScores:
    label: str
    scores: dict[str, float]  # task -> accuracy in %
    metrics: dict[str, str] = field(default_factory=dict)  # task -> metric key used
    groups: set[str] = field(default_factory=set)

    @property
    def average(self) -> float | None:
        """Unweighted mean over the leaf tasks (groups are already averages), as the paper reports it."""
        leaves = [v for k, v in self.scores.items() if k not in self.groups]
        return sum(leaves) / len(leaves) if leaves else None


def scores_of(label: str, results: dict[str, Any]) -> ModelScores:
    out = ModelScores(label, {}, {}, set(results.get("groups", {})))
    for task, res in results.get("results", {}).items():
        picked = primary_metric(res)
        if picked:
            out.metrics[task], out.scores[task] = picked[0], round(100.0 * picked[1], 4)
    return out


def _rows(models: list[ModelScores]) -> list[str]:
    return list(dict.fromkeys(t for m in models for t in m.scores))  # every model's tasks, first seen first


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table_cells(models: list[ModelScores]) -> tuple[list[str], list[list[str]]]:
    header = ["task"] + [m.label for m in models]
    body = [[t] + [_fmt(m.scores.get(t)) for m in models] for t in _rows(models)]
    body.append(["average"] + [_fmt(m.average) for m in models])
    return header, body


def markdown_table(models: list[ModelScores]) -> str:
    header, body = table_cells(models)
    esc = [h.replace("|", "\\|") for h in header]
    lines = ["| " + " | ".join(esc) + " |", "|" + "|".join(["---"] + ["---:"] * len(models)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def print_table(models: list[ModelScores], title: str = "accuracy (%)") -> None:
    from rich.console import Console
    from rich.table import Table

    header, body = table_cells(models)
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in body:
        table.add_row(*r, end_section=r[0] == "average")
    Console(stderr=True).print(table)


def slug(label: str, index: int) -> str:
    """A file-name-safe, unique name for the i-th evaluated model."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label.rstrip("/")).name or label).strip("_") or "model"
    return f"{index:02d}-{base}"


def write_model_results(root: Path, name: str, results: dict[str, Any]) -> None:
    """lm-eval's full results (config, versions, seeds, ...) and, if logged, per-sample outputs as JSONL."""
    from lm_eval.utils import handle_non_serializable

    results = dict(results)
    samples = results.pop("samples", None)
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / f"{name}.json").write_text(
        json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    if samples:
        sdir = root / "samples" / name
        sdir.mkdir(parents=True, exist_ok=True)
        for task, rows in samples.items():
            with open(sdir / f"{task}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")


def scores_json(models: list[ModelScores], artifact: str | None = None) -> dict[str, Any]:
    return {
        "artifact": artifact,
        "unit": "accuracy %",
        "models": [{"label": m.label, "scores": m.scores, "metrics": m.metrics, "average": m.average}
                   for m in models],
    }
