"""Early stopping of the LUT refit rounds (compress.refit_tolerance) and the rounds recorded per layer."""
import pytest
import torch

from helpers import tiny_llama
from sketchtune_cli.compress.pipeline import compress_model
from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.compress.sketcher import _refit_hessian, dequantize, sketch_layer


def _layer(rows=32, cols=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, cols, generator=g) * torch.exp(torch.randn(cols, generator=g))
    H = 2 * X.T @ X / X.shape[0]
    return torch.randn(rows, cols, generator=g) * 0.05, H


def _settings(**kw):
    return CompressSettings(**{"bits": 3, "groups_per_row": 2, "lut_dtype": "float32", "lut_refit_rounds": 6, **kw})


def test_zero_tolerance_runs_every_round_and_records_the_objective():
    W, H = _layer()
    s = _settings(refit_tolerance=0)
    sketch, stats = sketch_layer(W, H, s)
    assert stats.refit_rounds == 6 and len(stats.refit_objectives) == 7
    # the last recorded objective is tr(dW H_refit dW^T) of the sketch returned
    H_refit = _refit_hessian(H, stats.damping, s.refit_shrinkage, W.device)
    dw = W - dequantize(sketch)
    assert stats.refit_objectives[-1] == pytest.approx(float(((dw @ H_refit) * dw).sum()), rel=1e-4)


@pytest.mark.parametrize("groups,bits", [(1, 4), (2, 3), (4, 2)])
def test_a_large_tolerance_stops_early_and_the_objective_never_rises(groups, bits):
    W, H = _layer()
    all_rounds = sketch_layer(W, H, _settings(groups_per_row=groups, bits=bits, refit_tolerance=0))[1]
    early_sketch, early = sketch_layer(W, H, _settings(groups_per_row=groups, bits=bits, refit_tolerance=0.05))
    assert 1 <= early.refit_rounds < all_rounds.refit_rounds
    # the rounds both ran are the same computation
    assert early.refit_objectives == all_rounds.refit_objectives[:len(early.refit_objectives)]
    # what is kept never has a higher objective than the k-means start or any accepted round before it
    kept = early.refit_objectives[:-1] if early.refit_objectives[-1] > early.refit_objectives[-2] else early.refit_objectives
    assert all(b <= a for a, b in zip(kept, kept[1:]))
    s = _settings(groups_per_row=groups, bits=bits)
    H_refit = _refit_hessian(H, early.damping, s.refit_shrinkage, W.device)
    dw = W - dequantize(early_sketch)
    assert float(((dw @ H_refit) * dw).sum()) == pytest.approx(kept[-1], rel=1e-4)


def test_a_round_that_raises_the_objective_is_undone(monkeypatch):
    from sketchtune_cli.compress import sketcher

    W, H = _layer()
    real = sketcher.refit_luts
    calls = []

    def worse_second_round(*args):  # round 2 returns a LUT far off: the objective rises
        calls.append(1)
        out = real(*args)
        return out * 3 if len(calls) == 2 else out

    monkeypatch.setattr(sketcher, "refit_luts", worse_second_round)
    sketch, stats = sketch_layer(W, H, _settings(refit_tolerance=1e-6))
    assert stats.refit_rounds == 2 and stats.refit_objectives[2] > stats.refit_objectives[1]
    monkeypatch.setattr(sketcher, "refit_luts", real)
    one_round, _ = sketch_layer(W, H, _settings(lut_refit_rounds=1))
    assert torch.equal(sketch.lut, one_round.lut) and torch.equal(sketch.codes, one_round.codes)


def test_no_rounds_and_no_calibration_record_zero_rounds():
    W, H = _layer()
    assert sketch_layer(W, H, _settings(lut_refit_rounds=0, refit_tolerance=0.5))[1].refit_rounds == 0
    assert sketch_layer(W, None, _settings(refit_tolerance=0.5))[1].refit_rounds == 0


def test_pipeline_records_rounds_per_layer():
    ids = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(7))
    s = CompressSettings(bits=2, groups_per_row=1, kmeans_iters=15, lut_refit_rounds=3, refit_tolerance=0)
    result = compress_model(tiny_llama(0), ids, s)
    assert {layer["refit_rounds"] for layer in result.layers.values()} == {3}


def test_tolerance_changes_the_resume_fingerprint():
    from sketchtune_cli.compress.stage import resume_hash
    from sketchtune_cli.config import RunConfig

    cfg = RunConfig()
    changed = cfg.model_copy(deep=True)
    changed.compress.refit_tolerance = cfg.compress.refit_tolerance + 0.01
    assert resume_hash(cfg.section_dict("model", "compress")) != resume_hash(changed.section_dict("model", "compress"))


def test_cost_model_counts_follow_the_rounds_used():
    from sketchtune_cli.compress.cost_model import hessian_flops, layer_flops

    s = CompressSettings(bits=4, groups_per_row=4, lut_refit_rounds=6)
    full, early, none = layer_flops(576, 576, s), layer_flops(576, 576, s, refit_rounds=3), layer_flops(576, 576, s, 0)
    assert none["refit"] == none["objective"] == 0
    assert full["codes"] == 2 * early["codes"] and full["refit"] > early["refit"] > 0
    # the refit's sparse product dominates its count: rows * cols^2 adds per round
    assert 6 * 576 ** 3 < full["refit"] < 6 * 576 ** 3 * 1.5 + 2 * 576 ** 3
    assert hessian_flops(4096, 576) == 2 * 4096 * 576 ** 2
