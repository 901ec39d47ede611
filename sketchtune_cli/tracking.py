"""Experiment trackers (TensorBoard, W&B) for every stage, one run name per `sketchtune run`.

Accelerate's tracker classes do the writing. Layout: TensorBoard writes ``<logging.dir>/<project>/<run
name>/<stage>/`` (``logging.dir`` defaults to ``logs/`` beside the artifact, i.e. ``output_dir/logs`` under
`sketchtune run`), so one run directory holds compress, finetune and eval; W&B gets one run per stage in the
group ``<run name>`` (job type = the stage), with ``logging.tags`` and ``logging.wandb_entity``.

What each stage logs: compress the relative error and seconds of every layer (step = the layer's index in
model order); finetune its per-step metrics (loss, lr, grad_norm, tokens/s, eval_loss); eval each task's
score (accuracy %).
"""
from __future__ import annotations

from pathlib import Path


def run_name(cfg, out: Path) -> str:
    """``logging.run_name``; else the artifact's directory name (`sketchtune run` sets it to output_dir's name)."""
    return cfg.logging.run_name or Path(out).name


def log_root(cfg, out: Path) -> Path:
    return Path(cfg.logging.dir) if cfg.logging.dir else Path(out).parent / "logs"


def make_trackers(cfg, stage: str, out: Path) -> list:
    """Un-started accelerate trackers for ``stage`` (``.start()`` them on the main process only)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    name = run_name(cfg, out)
    trackers = []
    for kind in cfg.logging.trackers:  # train.trackers is folded in when the config loads
        if kind == "tensorboard":
            trackers.append(TensorBoardTracker(f"{name}/{stage}", log_root(cfg, out) / cfg.logging.project))
        elif kind == "wandb":
            extra = {"entity": cfg.logging.wandb_entity} if cfg.logging.wandb_entity else {}
            trackers.append(WandBTracker(cfg.logging.project, name=f"{name}-{stage}", group=name, job_type=stage,
                                         tags=list(cfg.logging.tags), dir=str(log_root(cfg, out)), **extra))
    return trackers


def flat_config(sections: dict) -> dict:
    """Scalar config values as ``section.key`` (what trackers accept as hyperparameters)."""
    return {f"{sec}.{k}": v for sec, values in sections.items() if isinstance(values, dict)
            for k, v in values.items() if isinstance(v, (int, float, str, bool))}


class StageLog:
    """The trackers of one stage run on one process (a no-op when none is configured or ``enabled`` is False,
    e.g. on ranks other than 0)."""

    def __init__(self, cfg, stage: str, out: Path, config: dict | None = None, enabled: bool = True):
        self.trackers = make_trackers(cfg, stage, out) if enabled else []
        for t in self.trackers:
            t.start()
            if config:
                t.store_init_configuration(flat_config(config))

    def log(self, values: dict, step: int | None = None) -> None:
        values = {k: v for k, v in values.items() if isinstance(v, (int, float)) and v == v}  # numbers, no NaN
        for t in self.trackers:
            t.log(values, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []

    def __enter__(self) -> "StageLog":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
