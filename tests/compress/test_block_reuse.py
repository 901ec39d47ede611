"""Reusing finished modules' outputs across a block's feeds (blocks.FinishedOutputs): the pipeline gives
bit for bit the sketches and model it gives when every feed recomputes the block, and it really skips work."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import tiny_llama
from sketchtune_cli.compress import pipeline
from sketchtune_cli.compress.blocks import FinishedOutputs, feed_until, run_block
from sketchtune_cli.compress.settings import CompressSettings

SETTINGS = CompressSettings(bits=2, groups_per_row=1, kmeans_iters=10, lut_refit_rounds=2)


class RecomputeAlways(FinishedOutputs):
    """The reference: never reuses anything."""

    def _wrap(self, name, forward):
        return forward


def _count_computations(model, monkeypatch) -> dict[str, int]:
    """Calls of the attention's and every linear's own forward (not served from a kept output)."""
    counts: dict[str, int] = {}
    names = {id(m): n for n, m in model.named_modules()}
    for cls in (type(model.model.layers[0].self_attn), nn.Linear):
        original = cls.forward

        def counting(self, *args, _original=original, **kwargs):
            counts[names[id(self)]] = counts.get(names[id(self)], 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counting)
    return counts


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pipeline_is_bit_identical_with_and_without_reuse(family, monkeypatch):
    ids = torch.randint(0, 128, (5, 24), generator=torch.Generator().manual_seed(3))
    runs = {}
    for label, cls in (("reuse", FinishedOutputs), ("recompute", RecomputeAlways)):
        monkeypatch.setattr(pipeline, "FinishedOutputs", cls)
        model = tiny_llama(0, family=family)
        counts = _count_computations(model, monkeypatch)
        result = pipeline.compress_model(model, ids, SETTINGS)
        runs[label] = (result, None, dict(counts))
        with torch.no_grad():
            runs[label] = (result, model(ids).logits, runs[label][2])
        monkeypatch.undo()
    (reuse, logits_reuse, calls_reuse), (ref, logits_ref, calls_ref) = runs["reuse"], runs["recompute"]
    assert set(reuse.sketches) == set(ref.sketches)
    for name in ref.sketches:
        assert torch.equal(reuse.sketches[name].lut, ref.sketches[name].lut), name
        assert torch.equal(reuse.sketches[name].codes, ref.sketches[name].codes), name
    assert torch.equal(logits_reuse, logits_ref)
    # per block: the group probe (1), then per sample the five forwards. Recomputing, the attention is entered
    # by all five (the q/k/v feed stops inside it), q_proj runs in four (a hook stops the first before it),
    # gate_proj in two. With reuse the down feed and the outputs take the attention's output kept by the
    # gate/up feed, which takes q's kept by the o feed; the outputs take gate's kept by the down feed.
    samples = ids.shape[0]
    for block in (0, 1):
        attn, q, gate = (f"model.layers.{block}.{m}" for m in ("self_attn", "self_attn.q_proj", "mlp.gate_proj"))
        assert (calls_ref[attn], calls_ref[q], calls_ref[gate]) == (1 + 5 * samples, 1 + 4 * samples, 1 + 2 * samples)
        assert (calls_reuse[attn], calls_reuse[q], calls_reuse[gate]) == (1 + 3 * samples, 1 + samples, 1 + samples)


class CountingLinear(nn.Linear):
    def forward(self, x):
        self.computed += 1
        return super().forward(x)


class Toy(nn.Module):
    """x -> a -> norm -> b, b's output updated in place by the block (as some models do)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.norm, self.b = CountingLinear(8, 8), nn.LayerNorm(8), CountingLinear(8, 8)
        self.a.computed = self.b.computed = 0

    @property
    def calls(self):
        return {"a": self.a.computed, "b": self.b.computed}

    def forward(self, x):
        y = self.b(self.norm(self.a(x)))
        y += 1.0  # in place on a child's output: a kept output must not be changed by it
        return y


def test_toy_block_reuses_only_finished_children_after_finished_ones():
    block = Toy()
    inputs = [torch.randn(3, 8) for _ in range(2)]
    with torch.no_grad(), FinishedOutputs(block, {"a": block.a, "b": block.b}, "cpu", "cpu") as reuse:
        expected = run_block(block, inputs, {}, "cpu")
        assert block.calls == {"a": 2, "b": 2}
        reuse.finish(["b"])  # b finished, but a (before it) is not: nothing may be reused
        feed_until(block, inputs, {}, "cpu", reuse)
        feed_until(block, inputs, {}, "cpu", reuse)
        assert block.calls == {"a": 6, "b": 6}
        reuse.finish(["a"])
        first = run_block(block, inputs, {}, "cpu", reuse=reuse)  # computes and keeps a and b
        again = run_block(block, inputs, {}, "cpu", reuse=reuse)  # reuses both
        assert block.calls == {"a": 8, "b": 8}
    for x, y, z in zip(expected, first, again):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert "forward" not in block.a.__dict__  # the class's forward is back


def test_nothing_is_kept_past_the_budget():
    block = Toy()
    inputs = [torch.randn(3, 8) for _ in range(2)]
    with torch.no_grad(), FinishedOutputs(block, {"a": block.a, "b": block.b}, "cpu", "cpu", budget_bytes=3 * 8 * 4) as reuse:
        reuse.finish(["a", "b"])
        first = run_block(block, inputs, {}, "cpu", reuse=reuse)
        assert reuse.kept_bytes == 3 * 8 * 4  # a's output on the first sample, nothing after it
        again = run_block(block, inputs, {}, "cpu", reuse=reuse)
        assert block.calls == {"a": 3, "b": 4}
    for x, y in zip(first, again):
        assert torch.equal(x, y)
