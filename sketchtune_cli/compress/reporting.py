"""What compress shows a person: a progress bar on stderr (block i/L, layer, elapsed, ETA), a summary table
by layer kind at the end, and an optional per-layer error plot. Only rank 0 reports."""
from __future__ import annotations

import logging
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

log = logging.getLogger(__name__)

PLOT_NAME = "layer_errors.png"


class LayerProgress:
    """A rich progress bar over all target layers on a terminal; one log line per block otherwise (batch
    jobs, CI logs). ``update`` / ``block_done`` are the pipeline's ``on_layer`` / ``on_block`` callbacks."""

    def __init__(self, total_layers: int, done: int = 0, enabled: bool = True):
        console = Console(stderr=True)
        self.enabled = enabled
        self.interactive = enabled and console.is_terminal
        self.start = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
            disable=not self.interactive,
        )
        self.task = self.progress.add_task("compress", total=total_layers, completed=done)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, block: int, num_blocks: int, name: str, stats: dict) -> None:
        self.progress.update(self.task, advance=1, description=f"block {block + 1}/{num_blocks} {short_name(name)}")

    def block_done(self, block: int, num_blocks: int, layers: dict[str, dict]) -> None:
        if not self.enabled or self.interactive:
            return
        errors = [s["rel_error"] for s in layers.values() if s.get("rel_error") is not None]
        elapsed = time.perf_counter() - self.start
        eta = elapsed / (block + 1) * (num_blocks - block - 1)  # resumed blocks count as instant: a rough ETA
        log.info("block %d/%d: %d layers, mean rel. error %.3e, max %.3e; elapsed %.0fs, ETA %.0fs", block + 1,
                 num_blocks, len(layers), statistics.fmean(errors) if errors else float("nan"),
                 max(errors, default=float("nan")), elapsed, eta)


def short_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else name


def kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def summarize(layers: dict[str, dict]) -> dict:
    """Mean / max relative output error per layer kind (q_proj, ..., down_proj) and overall."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    seconds = 0.0
    for name, s in layers.items():
        if s.get("rel_error") is not None:
            by_kind[kind(name)].append(s["rel_error"])
        seconds += s.get("seconds") or 0.0
    every = [e for errs in by_kind.values() for e in errs]
    worst = max(layers, key=lambda n: layers[n].get("rel_error") or -1.0) if layers else None
    return {
        "layers": len(layers),
        "mean_rel_error": statistics.fmean(every) if every else None,
        "max_rel_error": max(every) if every else None,
        "worst_layer": worst,
        "sketch_seconds": seconds,
        "by_kind": {k: {"count": len(v), "mean_rel_error": statistics.fmean(v), "max_rel_error": max(v)}
                    for k, v in by_kind.items()},
    }


def print_summary(summary: dict, wall_seconds: float, console: Console | None = None) -> None:
    table = Table(title=f"compress: {summary['layers']} layers in {wall_seconds:.1f}s "
                        f"(sketching {summary['sketch_seconds']:.1f}s)")
    for col in ("layer", "count", "mean rel. error", "max rel. error"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for k, v in summary["by_kind"].items():
        table.add_row(k, str(v["count"]), f"{v['mean_rel_error']:.3e}", f"{v['max_rel_error']:.3e}")
    if summary["mean_rel_error"] is not None:
        table.add_row("all", str(summary["layers"]), f"{summary['mean_rel_error']:.3e}",
                      f"{summary['max_rel_error']:.3e}", style="bold")
    (console or Console(stderr=True)).print(table)


def plot_errors(layers: dict[str, dict], path: Path) -> Path:
    """Relative output error of every layer in model order, one marker series per layer kind, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for i, (name, s) in enumerate(layers.items()):
        err = s.get("rel_error")
        if err is not None and err > 0 and math.isfinite(err):
            series[kind(name)][0].append(i)
            series[kind(name)][1].append(err)
    for k, (xs, ys) in series.items():
        ax.plot(xs, ys, "o", markersize=3, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel("relative output error")
    ax.set_title("sketch error per layer: ||WX - W_hat X||^2 / ||WX||^2")
    ax.legend(fontsize="small", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
