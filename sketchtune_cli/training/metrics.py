"""Training metrics: ``metrics.jsonl`` (one JSON object per logged step or eval), progress lines on stderr,
and the loss-curve PNG written at the end."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss_curve.png"


class MetricsLog:
    """Appends records to ``metrics.jsonl``; on resume, records past the checkpoint are dropped first so the
    file reads as one uninterrupted run."""

    def __init__(self, root: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(root) / METRICS
        self.enabled = enabled
        self.records: list[dict] = []
        if enabled and resume_step and self.path.is_file():
            self.records = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["step"] <= resume_step]
        if enabled:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def train_losses(self) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in self.records if "loss" in r]

    def eval_losses(self) -> list[tuple[int, float]]:
        return [(r["step"], r["eval_loss"]) for r in self.records if "eval_loss" in r]


def fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class Progress:
    """ETA from the wall time per step since start or resume (evals and checkpoints included)."""

    def __init__(self, start_step: int, total_steps: int):
        self.start_step, self.total = start_step, total_steps
        self.t0 = time.perf_counter()

    def eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)


def log_step(rec: dict, total: int, eta: float) -> None:
    log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %s",
             rec["step"], total, rec["loss"], rec["lr"], rec["grad_norm"], rec["tokens_per_s"], fmt_eta(eta))


def plot_losses(metrics: MetricsLog, out: Path) -> Path | None:
    """Loss curve (train per step, eval when present) as a PNG; headless (Agg)."""
    train = metrics.train_losses()
    if not train:
        return None
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*train), label="train", lw=1)
    evals = metrics.eval_losses()
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
