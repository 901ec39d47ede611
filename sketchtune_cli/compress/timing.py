"""Optional per-phase wall-clock timing of compress (issue 21's profile): ``with timing.collect() as t:``
around a run turns on the ``with timing.phase("kmeans"):`` markers in the pipeline and sketcher; without an
active collector a marker costs one context-variable lookup, so the markers stay in production code.

Times are exclusive: a phase nested in another (the Hessian update inside the forward that feeds it) is
subtracted from its parent, so the phases add up to the time covered. A context variable rather than a
parameter keeps the ``sketch_fn(W, H, settings)`` signature that callers plug in unchanged.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_ACTIVE: ContextVar["PhaseTimes | None"] = ContextVar("sketchtune_compress_timer", default=None)


class PhaseTimes:
    """Exclusive seconds and entry counts per phase name. ``sync`` waits for the GPU at phase edges (CUDA
    runs asynchronously: without it a phase's kernels are billed to whichever phase next blocks)."""

    def __init__(self, sync: bool = False):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.sync = sync and torch.cuda.is_available()
        self._stack: list[list] = []  # [name, start, seconds spent in nested phases]

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str):
        frame = [name, self._now(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = self._now() - frame[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + total - frame[2]
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stack:
                self._stack[-1][2] += total


@contextmanager
def collect(sync: bool = False):
    """Turn the phase markers on for the enclosed code; yields the :class:`PhaseTimes` they fill."""
    times = PhaseTimes(sync)
    token = _ACTIVE.set(times)
    try:
        yield times
    finally:
        _ACTIVE.reset(token)


@contextmanager
def phase(name: str):
    """Bill the enclosed code to ``name`` when a collector is active; a no-op otherwise."""
    times = _ACTIVE.get()
    if times is None:
        yield
    else:
        with times.phase(name):
            yield
