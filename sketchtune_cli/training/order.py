"""Deterministic data order: which examples form optimizer step ``s``, on which process.

The order is a pure function of (seed, step): a seeded permutation per epoch over a flat stream of
example positions, step ``s`` taking positions ``[s*B, (s+1)*B)``. Resume therefore needs only the step
number, and any number of processes sees the same global batches (each takes a contiguous slice)."""
from __future__ import annotations

import torch


class DataOrder:
    def __init__(self, n_examples: int, seed: int):
        if n_examples < 1:
            raise ValueError("no examples to order")
        self.n, self.seed = n_examples, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if len(self._perms) > 2:  # a batch spans at most two epochs; keep memory flat
                self._perms.clear()
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def global_batch(self, step: int, batch_size: int) -> list[int]:
        """Example indices of optimizer step ``step`` (0-based); batches run on across epoch ends."""
        return [self._perm(pos // self.n)[pos % self.n] for pos in range(step * batch_size, (step + 1) * batch_size)]


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's contiguous share of a global batch (the batch size is a multiple of ``world``)."""
    per = len(indices) // world
    return indices[rank * per:(rank + 1) * per]


def micro_batches(indices: list[int], micro_batch_size: int) -> list[list[int]]:
    return [indices[i:i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
