"""Reusing finished children's outputs across a block's feeds (blocks.FinishedChildren): the pipeline gives
bit for bit the sketches and model it gives when every feed recomputes the block, and it really skips work."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import tiny_llama
from sketchtune_cli.compress import pipeline
from sketchtune_cli.compress.blocks import FinishedChildren, feed_until, run_block
from sketchtune_cli.compress.settings import CompressSettings

SETTINGS = CompressSettings(bits=2, groups_per_row=1, kmeans_iters=10, lut_refit_rounds=2)


class RecomputeAlways(FinishedChildren):
    """The reference: never reuses anything."""

    def _wrap(self, name, forward):
        return forward


def _attention_calls(model, monkeypatch) -> list[int]:
    counter = [0]
    cls = type(model.model.layers[0].self_attn)
    original = cls.forward

    def counting(self, *args, **kwargs):
        counter[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counting)
    return counter


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pipeline_is_bit_identical_with_and_without_reuse(family, monkeypatch):
    ids = torch.randint(0, 128, (5, 24), generator=torch.Generator().manual_seed(3))
    runs = {}
    for label, cls in (("reuse", FinishedChildren), ("recompute", RecomputeAlways)):
        monkeypatch.setattr(pipeline, "FinishedChildren", cls)
        model = tiny_llama(0, family=family)
        calls = _attention_calls(model, monkeypatch)
        result = pipeline.compress_model(model, ids, SETTINGS)
        with torch.no_grad():
            logits = model(ids).logits
        runs[label] = (result, logits, calls[0])
    (reuse, logits_reuse, calls_reuse), (ref, logits_ref, calls_ref) = runs["reuse"], runs["recompute"]
    assert set(reuse.sketches) == set(ref.sketches)
    for name in ref.sketches:
        assert torch.equal(reuse.sketches[name].lut, ref.sketches[name].lut), name
        assert torch.equal(reuse.sketches[name].codes, ref.sketches[name].codes), name
    assert torch.equal(logits_reuse, logits_ref)
    # per block: the group probe (1), then per sample the five forwards enter the attention (the q/k/v feed
    # stops inside it); with reuse the down feed and the outputs take the output the gate/up feed kept.
    # The last term is the logits forward (one batched call per block).
    blocks, samples = 2, ids.shape[0]
    assert calls_ref == blocks * (1 + 5 * samples) + blocks
    assert calls_reuse == blocks * (1 + 3 * samples) + blocks


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
    with torch.no_grad(), FinishedChildren(block, {"a": block.a, "b": block.b}, "cpu", "cpu") as reuse:
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
