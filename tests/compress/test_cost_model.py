"""The compress cost model (compress/cost_model.py, compress/device_rates.py): its operation counts against
PyTorch's dispatcher, its time arithmetic against a hand sum, and the predictions the CLI prints. Its
times against measured phases: scripts/validate_cost_model.py (a benchmark, benchmarks/cost_model.md)."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import fields, replace
from types import SimpleNamespace

import pytest
import torch
from helpers import run_cli
from torch.utils._python_dispatch import TorchDispatchMode

from sketchtune_cli.compress import timing
from sketchtune_cli.compress.cost_model import LAYER_PHASES, Rates, Work, layer_work, predict_compress
from sketchtune_cli.compress.device_rates import GPUS, measure_rates, named_rates
from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.compress.sketcher import sketch_layer


class _CountOps(TorchDispatchMode):
    """Counts every ATen operation dispatched, billed to the innermost active timing phase."""

    def __init__(self, times):
        super().__init__()
        self.times, self.counts = times, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        stack = self.times._stack
        self.counts[stack[-1][0] if stack else None] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rows,cols,groups,product", [(32, 256, 1, "sparse"), (64, 512, 4, "sparse"),
                                                      (64, 512, 4, "dense")])
def test_operation_counts_match_the_dispatcher(rows, cols, groups, product):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(rows, cols, generator=gen) * 0.02
    X = torch.randn(1024, cols, generator=gen) * torch.rand(cols, generator=gen)
    H = 2 * X.T @ X / 1024
    s = CompressSettings(groups_per_row=groups, lut_refit_rounds=3, refit_product=product)
    with timing.collect() as times, _CountOps(times) as counter:
        _, stats = sketch_layer(W, H, s)
    work = layer_work(rows, cols, s, stats.refit_rounds, stats.kmeans_iterations, gpu=False)
    for phase in LAYER_PHASES:
        counted, modelled = counter.counts[phase], work[phase].ops
        assert counted > 0
        assert modelled == pytest.approx(counted, rel=0.15), phase


def _rates(**changes) -> Rates:
    base = {f.name: 1.0 for f in fields(Rates)}
    base.update(name="unit", source="test", factor_half=0.0, cache=1e9, op=1.0)
    base.update(changes)
    return Rates(**base)


def test_seconds_divide_each_amount_by_its_rate():
    rates = _rates(gemm=2.0, forward=4.0, factor=8.0, factor_half=100.0, small_factor=16.0, bandwidth=32.0,
                   sort=64.0, sparse=128.0, sparse_stream=256.0, sparse_out=512.0, scatter=1024.0, steps=2048.0,
                   loop=4096.0, op=0.5)
    amounts = {f.name: 1.0 * 2 ** i for i, f in enumerate(fields(Work)) if f.name != "cols"}
    w = Work(**amounts, cols=100)
    expected = (amounts["gemm"] / 2 + amounts["forward"] / 4 + amounts["factor"] / (8 * 100 / 200)
                + amounts["small_factor"] / 16 + amounts["bytes"] / 32 + amounts["sort"] / 64
                + amounts["sparse"] / 128 + amounts["sparse_out"] / 512 + amounts["scatter"] / 1024
                + amounts["steps"] / 2048 + amounts["loop"] / 4096 + amounts["ops"] * 0.5)
    assert w.seconds(rates) == pytest.approx(expected)
    # an H of 4 * 100^2 bytes beyond the cache: the product runs at the streamed rate
    streamed = w.seconds(replace(rates, cache=1000.0))
    assert streamed - w.seconds(rates) == pytest.approx(amounts["sparse"] / 256 - amounts["sparse"] / 128)


def test_work_adds_and_scales_fieldwise():
    a, b = Work(gemm=1, ops=2, cols=5), Work(gemm=3, bytes=4, cols=7)
    assert (a + b) == Work(gemm=4, bytes=4, ops=2, cols=7)
    assert a * 3 == Work(gemm=3, ops=6, cols=5)


def test_more_refit_rounds_cost_more_and_zero_rounds_cost_nothing():
    s = CompressSettings()
    rates = GPUS["h200"]
    full, none = layer_work(4096, 4096, s), layer_work(4096, 4096, s, refit_rounds=0)
    assert none["refit"].seconds(rates) == none["objective"].seconds(rates) == 0
    assert full["codes"].ops == 6 * none["codes"].ops  # one assignment, then one more per later round
    # the refit's sparse product: rows x cols^2 multiply-adds a round
    assert full["refit"].sparse == 6 * 4096 ** 3


def _llama_like(blocks: int):
    return SimpleNamespace(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=blocks)


def test_prediction_is_per_block_times_blocks_and_its_phases_sum_to_the_total():
    s = CompressSettings(num_samples=4, seq_len=64)
    two, four = predict_compress(_llama_like(2), s, GPUS["h100"]), predict_compress(_llama_like(4), s, GPUS["h100"])
    for phase, seconds in two.items():
        assert four[phase] == pytest.approx(2 * seconds)
    assert two["total"] == pytest.approx(sum(v for k, v in two.items() if k != "total"))
    # a slower GPU takes longer on the same work
    assert predict_compress(_llama_like(2), s, GPUS["a100"])["total"] > two["total"]


def test_probe_measures_every_rate_on_this_machine():
    rates = measure_rates("cpu")
    for f in fields(Rates):
        value = getattr(rates, f.name)
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, f.name
    assert 1e8 < rates.gemm < 1e14 and 1e-8 < rates.op < 1e-2 and rates.cache > 0
    assert named_rates("this") is rates
    with pytest.raises(KeyError, match="h200"):
        named_rates("tpu")


def test_inspect_estimate_prints_predicted_compress_time(capsys):
    code, stdout, err = run_cli(capsys, "inspect", "--estimate", "llama-3-8b", "--json", "--num-samples", "64")
    assert code == 0, err
    predicted = json.loads(stdout)["compress_time_predicted"]
    assert set(predicted) == {"this", "a100", "h100", "h200"}
    totals = {name: p["seconds"]["total"] for name, p in predicted.items()}
    assert totals["a100"] > totals["h100"] > totals["h200"] > 0 and totals["this"] > totals["a100"]
    assert predicted["h200"]["source"].startswith("spec sheet")
