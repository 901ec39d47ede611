"""Resumable benchmark grids (bench_adapt.py, bench_distill.py): one JSON file per finished cell under
``<out>/cells/``, written atomically so a killed run leaves no half-written cell, and the commit of the code
that ran it. Also the JSON report the one-shot timing scripts write last (:func:`write_json_report`)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cell_file(out: Path, cell: str) -> Path:
    return out / "cells" / f"{cell}.json"


def read_cell(out: Path, cell: str) -> dict | None:
    """A finished cell's record, or None when it has not run."""
    f = cell_file(out, cell)
    return json.loads(f.read_text()) if f.is_file() else None


def write_cell(out: Path, cell: str, record: dict) -> None:
    tmp = cell_file(out, cell).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(cell_file(out, cell))


def write_json_report(path, report: dict) -> None:
    """Writes ``report`` to ``path`` (making its folder) and prints the path: a timing script's last line."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(out)


def cells_to_run(requested: str, grid: list[str], is_done) -> list[str]:
    """The cells of ``requested`` (comma-separated; empty: the whole grid) that have not run; a name outside
    the grid is an error."""
    todo = [c for c in (requested.split(",") if requested else grid) if not is_done(c)]
    unknown = [c for c in todo if c not in grid]
    if unknown:
        raise SystemExit(f"not cells of this grid: {unknown} (see --list)")
    return todo


def git_commit() -> str:
    """The checkout's commit, "+dirty" when tracked files differ from it (what code a cell ran)."""
    def git(*args):
        try:
            return subprocess.check_output(["git", *args], cwd=REPO, text=True, stderr=subprocess.DEVNULL).strip()
        except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout: recorded as "unknown"
            return ""

    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain", "-uno") else "")
