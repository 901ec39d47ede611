"""HessianAccumulator against a float64 ``(2/N) X^T X`` over all rows."""
import torch
from torch import nn

from sketchtune_cli.compress.blocks import pre_hooks
from sketchtune_cli.compress.hessian import HessianAccumulator


def _reference(batches):
    X = torch.cat([b.reshape(-1, b.shape[-1]) for b in batches]).double()
    return (2.0 / X.shape[0]) * X.T @ X, X.shape[0]


def test_running_average_matches_full_sum():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 7, 16, generator=g), torch.randn(33, 16, generator=g) * 3, torch.randn(1, 1, 16, generator=g)]
    acc = HessianAccumulator(16)
    for b in batches:
        acc.add(b)
    ref, n = _reference(batches)
    assert acc.n_samples == n
    torch.testing.assert_close(acc.hessian.double(), ref, rtol=1e-5, atol=1e-5)
    assert acc.hessian.dtype == torch.float32


def test_raw_sums_reproduce_one_accumulator():
    """What a distributed caller does: all-reduce raw sums and counts."""
    g = torch.Generator().manual_seed(2)
    a_batches = [torch.randn(10, 12, generator=g)]
    b_batches = [torch.randn(25, 12, generator=g), torch.randn(4, 12, generator=g)]
    a, b, whole = HessianAccumulator(12), HessianAccumulator(12), HessianAccumulator(12)
    for x in a_batches:
        a.add(x)
        whole.add(x)
    for x in b_batches:
        b.add(x)
        whole.add(x)
    reduced = HessianAccumulator.from_sum(a.raw_sum() + b.raw_sum(), a.n_samples + b.n_samples)
    torch.testing.assert_close(reduced.hessian, whole.hessian, rtol=1e-5, atol=1e-6)
    assert reduced.n_samples == whole.n_samples
    before = a.hessian.clone()
    a.all_reduce_()  # not initialised: a no-op
    assert torch.equal(a.hessian, before) and a.n_samples == 10


def test_capture_hooks_record_linear_inputs():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    accs = {"lin": HessianAccumulator(6)}
    x = torch.randn(4, 9, 6)
    with pre_hooks({"lin": lin}, lambda name, inp: accs[name].add(inp)):  # the pipeline's way of collecting H
        lin(x)
    lin(x)  # removed: no longer counted
    ref, n = _reference([x])
    assert accs["lin"].n_samples == n
    torch.testing.assert_close(accs["lin"].hessian.double(), ref, rtol=1e-5, atol=1e-6)
