"""Optional per-phase timing (compress/timing.py): exclusive times, a no-op without a collector, and the
pipeline's markers."""
import time

import torch

from helpers import tiny_llama
from sketchtune_cli.compress import timing
from sketchtune_cli.compress.pipeline import compress_model
from sketchtune_cli.compress.settings import CompressSettings


def test_nested_phases_are_exclusive():
    with timing.collect() as t:
        start = time.perf_counter()
        with timing.phase("outer"):
            time.sleep(0.02)
            with timing.phase("inner"):
                time.sleep(0.05)
        wall = time.perf_counter() - start
    assert t.calls == {"outer": 1, "inner": 1}
    assert t.seconds["inner"] >= 0.05 and t.seconds["outer"] >= 0.02
    assert t.seconds["outer"] + t.seconds["inner"] <= wall  # the inner phase is not billed twice


def test_markers_are_a_no_op_without_a_collector():
    with timing.phase("anything"):
        pass
    with timing.collect() as t:
        pass
    assert t.seconds == {}


def test_pipeline_reports_its_phases():
    ids = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(7))
    s = CompressSettings(bits=2, groups_per_row=1, kmeans_iters=5, lut_refit_rounds=2)
    with timing.collect() as t:
        compress_model(tiny_llama(0), ids, s)
    assert {"forward", "hessian", "prepare", "kmeans", "codes", "refit", "objective", "error"} <= set(t.seconds)
    assert t.calls["codes"] == 2 * t.calls["kmeans"]  # once after k-means, once more before round 2
