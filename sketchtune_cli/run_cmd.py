"""`sketchtune run`: all four stages from one YAML, with --dry-run, --from and --until."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer

from . import stages as stage_api
from .config import RunConfig, dump_yaml, load_config
from .errors import PreflightError, UserError
from .orchestrator import STAGES, preflight_stages, run_stages, select_stages, summary_rows

log = logging.getLogger(__name__)

EXAMPLES = """
Examples:

  sketchtune run --config demo                                  # the embedded model, CPU, minutes

  sketchtune run --config math --dry-run                        # check every input; plan + sizes, no weights

  sketchtune run --config math eval.data_dir=/data/llm-adapters compress.groups_per_row=8

  sketchtune run --config math --until compress                 # only build the sketch

  sketchtune run --config math --from eval --overwrite          # re-evaluate and re-export
"""


def dry_run_report(cfg: RunConfig, stages: list[str] | None = None, overwrite: bool = False) -> tuple[dict, list[str]]:
    """What the run will do and need, and every problem it would hit: the same preflight `run` does (no
    weights loaded). The numbers come from each stage's plan; all stages are planned, skipped ones too."""
    names = list(stages or STAGES)
    steps, plans, problems = preflight_stages(cfg, names, overwrite)
    for name in STAGES:  # in order: the compress plan's sketch sizes the later stages' artifacts
        if name in plans:
            continue
        job = stage_api.Job(Path(cfg.output_dir) / name, pending=True, planned_sketch=plans.get("compress", {}).get("sketch"))
        try:
            plans[name] = stage_api.get(name).plan(cfg, job)
        except UserError:
            plans[name] = {}  # its cause is among the problems
    compress, finetune = plans["compress"], plans["finetune"]
    report = {
        "model": cfg.model.name,
        "output_dir": cfg.output_dir,
        "stages": {s: str(Path(cfg.output_dir) / s) for s in STAGES},
        "actions": {step.stage: step.action for step in steps},
        "sketch": compress.get("sketch"),
        "trainable_params": compress.get("trainable_params"),
        "base_model_bytes": compress.get("base_model_bytes"),
        "finetune_memory_bytes_rough": finetune.get("finetune_memory_bytes_rough"),
        "calibration_tokens": compress.get("calibration_tokens"),
        "distill_memory": compress.get("distill_memory"),
        "estimates": _estimates(cfg),
        "train_records": finetune.get("train_records"),
        "optimizer_steps": finetune.get("optimizer_steps"),
        "artifact_bytes": {name: plans[name].get("artifact_bytes") for name in STAGES},
        "problems": problems,
    }
    return report, problems


def _estimates(cfg: RunConfig) -> dict:
    """Each stage's dry-run-only predictions (``Stage.estimate``); a stage whose model cannot be read has
    none (the problem is already in the report)."""
    out = {}
    for name in STAGES:
        stage = stage_api.get(name)
        if stage.estimate_fn is None:
            continue
        try:
            out[name] = stage.estimate(cfg)
        except UserError:
            out[name] = {}
    return out


def _print_dry_run(cfg: RunConfig, report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .estimate import distill_plan_rows, human_bytes, human_seconds, memory_rows

    console = Console(stderr=True)
    console.print("[bold]resolved config[/bold]")
    console.print(dump_yaml(cfg), markup=False)
    table = Table(title=f"sketchtune run --dry-run: {cfg.model.name}")
    table.add_column("what")
    table.add_column("value", justify="right")
    sk = report["sketch"]
    if sk:
        table.add_row("sketched layers", f"{sk['sketched_layers']}")
        table.add_row("trainable params (LUTs)", f"{report['trainable_params']:,}")
        table.add_row("base model (sketch)", human_bytes(report["base_model_bytes"]))
        table.add_row("dense model (bf16)", human_bytes(sk["dense_model_bytes"]))
        table.add_row("bits per sketched weight", f"{sk['bits_per_weight']:.3f}")
    table.add_row("calibration tokens", f"{report['calibration_tokens'] or 0:,}")
    for device in report["estimates"].get("compress", {}).get("compress_time", {}).values():  # compress.cost_model
        table.add_row(f"compress time on {device['device']} (predicted)", human_seconds(device["seconds"]["total"]))
    if report["distill_memory"]:
        for what, value in distill_plan_rows(report["distill_memory"]):
            table.add_row(what, value)
    table.add_row("training records", "unknown (see the problems)" if report["train_records"] is None else f"{report['train_records']:,}")
    table.add_row("optimizer steps", "unknown" if report["optimizer_steps"] is None else f"{report['optimizer_steps']:,}")
    mem = report["finetune_memory_bytes_rough"]
    for what, value in memory_rows("fine-tune memory per device (rough)", mem) if mem else []:
        table.add_row(what, value)
    for stage, action in report["actions"].items():
        size = report["artifact_bytes"].get(stage)
        table.add_row(f"{stage}: {action}", human_bytes(size) if size else "")
    console.print(table)


def _print_summary(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sketchtune run: summary")
    for col in ("stage", "status", "artifact", "size", "time", "results"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(stderr=True).print(table)


def run_command(
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides"),
    config: str = typer.Option(..., "--config", "-c", help="YAML config file or bundled config name (demo, math, commonsense)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check every input and print the resolved config and estimates; load no weights"),
    from_stage: Optional[str] = typer.Option(None, "--from", help=f"first stage to run ({', '.join(STAGES)})"),
    until: Optional[str] = typer.Option(None, "--until", help="last stage to run"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace artifacts made with another config (up-to-date ones are still skipped)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary (or dry-run report) as JSON on stdout"),
):
    """Run compress -> finetune -> eval -> export into OUTPUT_DIR/<stage>/, skipping stages that are up to
    date and resuming interrupted ones. Prints the last artifact's path on stdout."""
    cfg = load_config(config, overrides)
    stages = select_stages(from_stage, until)
    if dry_run:
        report, problems = dry_run_report(cfg, stages, overwrite)
        report["would_run"] = stages
        _print_dry_run(cfg, report)
        if as_json:
            typer.echo(json.dumps(report, indent=2, default=str))
        if problems:
            raise PreflightError(problems)
        return
    reports = run_stages(cfg, stages, overwrite=overwrite,
                           on_stage=lambda s: log.info("== stage %s ==", s))
    _print_summary(summary_rows(reports))
    if as_json:
        typer.echo(json.dumps([{"stage": r.stage, "status": r.status, "path": str(r.path), "seconds": round(r.seconds, 1),
                                "results": r.headline} for r in reports], indent=2, default=str))
    else:
        typer.echo(str(reports[-1].path))


def register(app: typer.Typer) -> None:
    app.command("run", epilog=EXAMPLES)(run_command)
