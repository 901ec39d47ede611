"""The finetune stage behind ``stages.Stage``: base sketch + data -> fine-tune artifact (LUTs only)."""
from __future__ import annotations

from pathlib import Path

from .. import preflight
from ..processes import launch_world_size
from ..stages import Stage
from .settings import RESULT_FREE, SECTIONS
from .data import data_problems, held_out_count

# lut_adapter (fp32) + a checkpoint's LUTs and AdamW moments (fp32), per trainable value, times KEEP
ARTIFACT_BYTES_PER_PARAM = 4 + 3 * 4 * 2


def base_path(cfg, job) -> str:
    """The sketch to fine-tune: the job's input, --base / train.base, else ``output_dir/compress``."""
    return job.inputs[0] if job.inputs else cfg.train.base or str(Path(cfg.output_dir) / "compress")


def checked_data(data) -> tuple[int | None, list[str]]:
    """``data_problems(data)``: within one preflight pass, ``check`` and ``plan`` share one read."""
    n, problems = preflight.once(("finetune.data", data.model_dump_json()), lambda: data_problems(data))
    return n, list(problems)


def check(cfg, job) -> list[str]:
    from ..training.trainer import batch_problems, resolve_mixed_precision

    problems = []
    if not job.pending:
        base = base_path(cfg, job)
        if not (job.inputs or cfg.train.base) and not Path(base).exists():
            problems.append(f"no base sketch: pass --base SKETCH_DIR or set train.base (looked for {base})")
        else:
            problems += preflight.artifact_problems(base, "sketch")
    problems += checked_data(cfg.data)[1]
    problems += batch_problems(cfg.train, launch_world_size())
    problems += preflight.problem_of(resolve_mixed_precision, cfg.train.mixed_precision, preflight.cuda_available())
    return problems


def train_records(cfg) -> int | None:
    """Records the trainer will see: after ``data.limit``, less those held out for validation."""
    n, _ = checked_data(cfg.data)
    if n is None or cfg.data.val_path:
        return n
    return n - held_out_count(n, cfg.data.val_fraction)


def plan(cfg, job) -> dict:
    from ..estimate import training_memory_bytes
    from ..training.trainer import optimizer_steps

    records = train_records(cfg)
    est = preflight.estimate_of(None if job.pending else base_path(cfg, job), job.planned_sketch)
    out = {"train_records": records,
           "optimizer_steps": optimizer_steps(cfg.train, records) if records is not None or cfg.train.max_steps else None}
    if est is not None:
        model_config = preflight.model_config(est.model)
        if model_config is not None:
            out["finetune_memory_bytes_rough"] = training_memory_bytes(
                est, model_config, cfg.train.micro_batch_size, cfg.data.max_seq_len, cfg.train.gradient_checkpointing)
        out["artifact_bytes"] = est.trainable_params * ARTIFACT_BYTES_PER_PARAM
    return out


def run(cfg, job, parent):
    from .stage import run_finetune

    return run_finetune(cfg, job.out, resume=job.resume, overwrite=job.overwrite, base=parent)


def headline(manifest) -> dict:
    r = manifest.results or {}
    keys = ("steps", "first_loss", "final_loss", "eval_loss", "trainable_params", "tokens_per_s")
    return {k: r[k] for k in keys if k in r}


STAGE = Stage("finetune", "finetune", "compress", SECTIONS, RESULT_FREE, check, plan, run, headline)
