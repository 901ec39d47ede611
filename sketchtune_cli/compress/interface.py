"""The compress stage behind ``stages.Stage``: model + calibration -> sketch artifact."""
from __future__ import annotations

from .. import preflight
from ..processes import launch_world_size
from ..stages import Stage
from .settings import RESULT_FREE, SECTIONS
from .calibration import calib_problems
from .distill import distill_problems


def check(cfg, job) -> list[str]:
    problems = preflight.model_problems(cfg.model.name)
    if not problems:  # groups_per_row must divide every sketched layer
        problems += preflight.problem_of(preflight.sketch_estimate, cfg.model.name, cfg.compress)
    problems += calib_problems(cfg.compress)
    problems += preflight.device_problems({"compress.device": cfg.compress.device})
    problems += distill_problems(cfg.compress, launch_world_size())
    return problems


def plan(cfg, job) -> dict:
    est = preflight.sketch_estimate(cfg.model.name, cfg.compress)
    out = {"sketch": est.to_dict(), "trainable_params": est.trainable_params,
           "base_model_bytes": est.base_model_bytes,
           "calibration_tokens": cfg.compress.num_samples * cfg.compress.seq_len,
           "artifact_bytes": est.base_model_bytes}
    model_config = preflight.model_config(est.model) if cfg.compress.distill_steps else None
    if model_config is not None:
        from ..estimate import distill_memory_plan

        s = cfg.compress
        out["distill_memory"] = distill_memory_plan(est, model_config, s.distill_micro_batch_size, s.seq_len,
                                                    s.distill_gradient_checkpointing, s.distill_teacher)
    return out


def estimate(cfg) -> dict:
    """Predicted compress time on this machine (probed) and the named GPUs (compress.cost_model)."""
    from ..estimate import compress_time_estimates
    from ..models import load_model_config

    return {"compress_time": compress_time_estimates(load_model_config(cfg.model.name), cfg.compress)}


def run(cfg, job, parent):
    from .stage import run_compress

    return run_compress(cfg, job.out, resume=job.resume, overwrite=job.overwrite, plot=cfg.logging.plots)


def headline(manifest) -> dict:
    r = manifest.results or {}
    s = r.get("summary", {})
    return {k: s[k] for k in ("layers", "mean_rel_error", "max_rel_error") if k in s} | (
        {"wall_s": r["wall_seconds"]} if "wall_seconds" in r else {})


STAGE = Stage("compress", "sketch", None, SECTIONS, RESULT_FREE, check, plan, run, headline, estimate)
