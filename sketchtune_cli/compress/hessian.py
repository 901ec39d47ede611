"""Layer-input Hessians ``H = (2/N) sum_t x_t^T x_t`` for the sketcher (docs/method.md §2 step 1).

N counts input ROWS (tokens), not sequences: with a fixed sequence length the two differ by a constant
factor, which nothing downstream depends on (damping is relative to mean(diag H), the k-means weights are
normalised per group and the relative output error is a ratio), and counting tokens stays right when the
caller drops padding tokens or mixes sequence lengths.

The estimate is kept as a running average, as GPTQ does (``H <- H * n/(n+m) + (2/(n+m)) X^T X``), so its
magnitude does not grow with the amount of calibration data and float32 stays accurate. For several
processes, all-reduce ``raw_sum()`` and ``n_samples`` (see ``all_reduce_``).
"""
from __future__ import annotations

import torch


class HessianAccumulator:
    """Accumulates ``H`` for one linear layer from batches of its inputs ``[..., cols]``."""

    def __init__(self, cols: int, device: torch.device | str | None = None):
        self.cols = cols
        self.hessian = torch.zeros(cols, cols, dtype=torch.float32, device=device)
        self.n_samples = 0

    def add(self, x: torch.Tensor) -> None:
        """Adds a batch of inputs ``x [..., cols]``."""
        if x.shape[-1] != self.cols:
            raise ValueError(f"inputs have {x.shape[-1]} features, the accumulator expects {self.cols}")
        x = x.detach().reshape(-1, self.cols)
        m = x.shape[0]
        if m == 0:
            return
        x = x.to(device=self.hessian.device, dtype=torch.float32)
        total = self.n_samples + m
        # running average: rescale the old mean, then add the new batch's share
        self.hessian.mul_(self.n_samples / total)
        self.hessian.addmm_(x.T, x, alpha=2.0 / total)
        self.n_samples = total

    def raw_sum(self) -> torch.Tensor:
        """``sum x^T x`` (what a distributed caller all-reduces together with ``n_samples``)."""
        return self.hessian * (self.n_samples / 2.0)

    @classmethod
    def from_sum(cls, raw_sum: torch.Tensor, n_samples: int) -> "HessianAccumulator":
        """Rebuilds an accumulator from an (all-reduced) ``raw_sum`` and sample count."""
        acc = cls(raw_sum.shape[-1], device=raw_sum.device)
        if n_samples > 0:
            acc.hessian = raw_sum.to(torch.float32) * (2.0 / n_samples)
        acc.n_samples = int(n_samples)
        return acc

    def all_reduce_(self, group=None) -> "HessianAccumulator":
        """Sums the raw statistics over all processes of ``torch.distributed`` (no-op when not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        raw = self.raw_sum()
        count = torch.tensor([float(self.n_samples)], dtype=torch.float64, device=raw.device)
        dist.all_reduce(raw, group=group)
        dist.all_reduce(count, group=group)
        merged = HessianAccumulator.from_sum(raw, int(count.item()))
        self.hessian, self.n_samples = merged.hessian, merged.n_samples
        return self

