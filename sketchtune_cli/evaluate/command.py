"""`sketchtune eval`: score sketches, fine-tunes, exports or plain models with lm-eval, side by side."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional

import typer

from ..config import load_config

HELP = """Evaluate one or more models with lm-eval and write an eval artifact.

ARTIFACT is a sketch, a fine-tune (its base sketch + LUTs), an export, or a
plain model (alias, Hub id or directory) as a baseline. Each model is built
once and handed to lm-eval. With several, one side-by-side table (rows: tasks,
columns: models, plus the average) goes to stderr and to results.md.

\b
Tasks (--tasks, comma-separated), the paper's protocol (st_*):
  math, greedy generation, last number:  st_gsm8k st_svamp st_addsub
    st_multiarith st_singleeq st_mawps; st_aqua (first letter A-E)
  commonsense, generation, first label word:  st_boolq st_piqa
    st_social_i_qa st_hellaswag st_winogrande st_arc_easy st_arc_challenge
    st_openbookqa
  log-likelihood of each label word:  st_boolq_ll, st_piqa_ll, ...
  groups:  math, commonsense, commonsense_ll (= st_math, ...)
  st_demo_arith: the demo's held-out arithmetic (sketchtune run --config demo)
The st_* tasks read LLM-Adapters test files DIR/<Dataset>/test.json
(--data-dir, eval.data_dir or $SKETCHTUNE_DATA; offline, and first). With
none of those, st_* tasks and the groups fetch their files from the
LLM-Adapters repository (commit 8166572; a mirror: $SKETCHTUNE_LLM_ADAPTERS_URL)
once into $SKETCHTUNE_CACHE, each checked against a hash sketchtune pins.
A bare name (gsm8k, arc_easy, boolq_ll) is the st_* task when a data dir
is known, else lm-eval's own task; lm:NAME is always lm-eval's own.

\b
Examples:
  sketchtune eval runs/l3-math --tasks math      # test files fetched, verified
  sketchtune eval runs/l3-math --data-dir data/llm-adapters --tasks math
  sketchtune eval llama-3-8b runs/l3-gpr4 runs/l3-math \\
      --data-dir data/llm-adapters --tasks gsm8k,arc_easy
  sketchtune eval smollm2-135m runs/sketch --tasks boolq,boolq_ll \\
      --limit 50 eval.max_new_tokens=32
  sketchtune eval runs/l3-math --tasks lm:gsm8k --num-fewshot 5 -o runs/lm
  accelerate launch -m sketchtune_cli eval runs/l3-math --tasks math

Prints the eval artifact path on stdout (with --json, the scores as JSON).
Under accelerate launch (or torchrun; on CPUs use torchrun, gloo) each
process evaluates a shard of every task on its own device; rank 0 gathers
the results and writes the artifact. Scores equal a single-process run.
"""

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)+=")


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Positional words are artifacts, except ``section.key=value`` overrides (unless such a path exists)."""
    specs, overrides = [], []
    for a in args:
        (overrides if _OVERRIDE.match(a) and not Path(a).exists() else specs).append(a)
    return specs, overrides


def _csv(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def eval_command(
    args: List[str] = typer.Argument(..., metavar="ARTIFACT... [key=value...]",
                                     help="artifacts or models to evaluate, then config overrides"),
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="comma-separated tasks (see above) [eval.tasks]"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="LLM-Adapters test files: DIR/<Dataset>/test.json [eval.data_dir]"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="first N examples per task [eval.limit]"),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="few-shot examples [eval.num_fewshot]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="batch size [eval.batch_size]"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="generation length of the st_* tasks [eval.max_new_tokens]"),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template", help="wrap prompts in the tokenizer's chat template [eval.chat_template]"),
    log_samples: Optional[bool] = typer.Option(None, "--log-samples/--no-log-samples", help="save every prompt, output and score [eval.log_samples]"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="eval artifact directory [default: <output_dir>/eval]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
    base: Optional[str] = typer.Option(None, "--base", help="base sketch of the fine-tunes / lut-only exports, when it moved on its own (checked by content hash)"),
    as_json: bool = typer.Option(False, "--json", help="print the scores as JSON on stdout instead of the path"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config file or bundled config name"),
):
    from . import report
    from .interface import STAGE
    from .stage import run_eval
    from .. import preflight
    from ..errors import UserError
    from ..stages import Job

    specs, overrides = split_args(args)
    if not specs:
        raise UserError("give at least one ARTIFACT to evaluate (a sketch, fine-tune, export or model name)")
    values = {"eval.tasks": _csv(tasks), "eval.data_dir": str(data_dir) if data_dir else None, "eval.limit": limit,
              "eval.num_fewshot": num_fewshot, "eval.batch_size": batch_size, "eval.max_new_tokens": max_new_tokens,
              "eval.chat_template": chat_template, "eval.log_samples": log_samples}
    cfg = load_config(config, overrides, values)
    out = output or Path(cfg.output_dir) / "eval"
    preflight.require([(STAGE, Job(out, overwrite=overwrite, inputs=tuple(specs), base=base))], cfg)
    outcome = run_eval(specs, STAGE.view(cfg), out, overwrite=overwrite, base=base)
    if outcome.path is None:  # a data-parallel worker: rank 0 reports
        return
    report.print_table(outcome.models)
    print(json.dumps(outcome.scores, indent=2) if as_json else outcome.path)


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_command)  # no ARTIFACT: a one-line usage error, exit 2
