"""Run lm-eval on one already-built model.

The model is built by ``sketchtune_cli.loading`` (sketches, fine-tunes and exports need our own loader) and
handed to lm-eval's ``HFLM`` as an object. HFLM then skips its own ``accelerate launch`` handling (it
assumes one process), so ``attach_data_parallel`` gives it the rank, world size and accelerator itself:
lm-eval's evaluator shards the requests by ``lm.rank`` / ``lm.world_size`` and gathers them on rank 0.
Checked on CPU with ``torchrun --nproc_per_node 2`` (gloo): same scores and generations as one process
(lm-eval pads the shards to equal length, so a padded request's result can show up twice in a logged
sample; metrics are unaffected). ``accelerate launch --cpu`` starts a single process, hence torchrun there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .. import processes
from ..errors import UserError, describe

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """lm-eval's options for a caller without a config; the stage passes its ``eval:`` section (same names)."""

    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    chat_template: bool = False
    log_samples: bool = False


def eval_device() -> str:
    """This process's device: its own GPU under data parallelism, else cuda:0 or the CPU."""
    import torch

    if torch.cuda.is_available():
        return str(processes.state().device)
    return "cpu"


def attach_data_parallel(lm) -> None:
    """Make an HFLM built from a model object take part in data parallelism when several processes run."""
    state = processes.state()
    if state.num_processes <= 1:
        return
    import torch
    from accelerate import Accelerator

    lm.accelerator = Accelerator(cpu=not torch.cuda.is_available())
    lm._rank = state.process_index
    lm._world_size = state.num_processes
    log.info("data parallel: rank %d of %d", lm._rank, lm._world_size)


def make_lm(model, tokenizer, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    if tokenizer.pad_token_id is None:  # batched generation pads; most base models define no pad token
        tokenizer.pad_token = tokenizer.eos_token
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    attach_data_parallel(lm)
    return lm


def run_lm_eval(lm, tasks: list[str], task_manager, opts: RunOptions) -> dict[str, Any] | None:
    """lm-eval's full results dict (None on ranks other than 0)."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=task_manager,
        limit=opts.limit,
        num_fewshot=opts.num_fewshot,
        batch_size=opts.batch_size,
        log_samples=opts.log_samples,
        apply_chat_template=opts.chat_template,
    )


def make_task_manager(include_dir, harness: list[str]):
    """Index our generated tasks, plus lm-eval's own only when some are asked for (indexing them is slow)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_dir), include_defaults=bool(harness))


def unknown_tasks(task_manager, harness: list[str]) -> list[str]:
    """One line for each name in ``harness`` that ``task_manager`` does not know."""
    known = task_manager.all_tasks
    return [f"unknown task {name!r}: neither a bundled paper-protocol task (st_*, math, commonsense; see "
            "`sketchtune eval --help`) nor an lm-eval task (`lm-eval ls tasks` lists those)"
            for name in harness if name not in known]


def check_harness_tasks(task_manager, harness: list[str]) -> None:
    """Fail before any model is loaded: unknown names, or lm-eval datasets that cannot be loaded (offline)."""
    unknown = unknown_tasks(task_manager, harness)
    if unknown:
        raise UserError(unknown[0])
    if not harness:
        return
    try:
        task_manager.load(harness)
    except Exception as e:  # datasets raises many types here (ConnectionError, offline mode, not found)
        raise UserError(
            f"lm-eval task(s) {', '.join(harness)}: the dataset could not be loaded ({describe(e, 160)}); offline, "
            "use the paper-protocol tasks over local files: "
            "--data-dir DIR --tasks gsm8k,arc_easy (DIR/<Dataset>/test.json, LLM-Adapters layout)"
        ) from None
