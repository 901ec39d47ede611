"""Preemption: SIGTERM and SIGUSR1 ask a running compress or fine-tune to stop at the next safe point.

A cluster scheduler warns a job before it kills it (SLURM: ``#SBATCH --signal=B:USR1@300``; preemption and
``scancel`` send SIGTERM). The handler only raises a flag; the stage finishes the decoder block (compress)
or optimizer step (finetune) in hand, writes its checkpoint, and raises :class:`Interrupted`, which the CLI
turns into exit code :data:`EXIT_INTERRUPTED`. Running the same command with ``--resume`` continues from
that checkpoint and ends bit-identical (on the CPU) to an uninterrupted run.

With several processes only some may have been signalled (or signalled a step apart): every rank takes
part in one all-reduce (MAX) of its flag per block/step, so all stop after the same one and the
checkpoint is whole.

``add_progress_hook`` lets tests act at an exact block/step (e.g. send the signal to their own process)
instead of sleeping, and benchmarks score a model at chosen steps (scripts/bench_distill.py); production
code only calls :func:`notify_progress`.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

import torch

EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: "temporary failure, try again" (here: with --resume)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(Exception):
    """The run stopped on request after writing a checkpoint; the same command with ``--resume`` continues."""

    exit_code = EXIT_INTERRUPTED


class StopRequest:
    """Set by SIGTERM/SIGUSR1 while installed (see :func:`stop_requests`)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum, _frame) -> None:
        self.signum = signum  # only a flag: the loop acts on it at the next block/step boundary

    @property
    def name(self) -> str:
        if self.signum == 0:
            return "a signal to another process"
        return signal.Signals(self.signum).name if self.signum else "request"

    def agreed(self, *more_flags: bool, device: torch.device | str = "cpu") -> list[bool]:
        """``[stop, *more_flags]`` combined over all processes (any rank's True wins), in one all-reduce.
        A collective under torch.distributed: every rank must call it at the same point."""
        flags = [self.signum is not None, *more_flags]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = [bool(v) for v in t.tolist()]
            if flags[0] and self.signum is None:
                self.signum = 0  # another rank was signalled
        return flags


_active: list[StopRequest] = []


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch SIGTERM/SIGUSR1 into a :class:`StopRequest` for the duration (the stage loops find it with
    :func:`current`); the previous handlers come back afterwards. Off the main thread (where Python cannot
    install handlers) the request just never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        previous = {}
    else:
        previous = {sig: signal.signal(sig, request._handle) for sig in STOP_SIGNALS}
    _active.append(request)
    try:
        yield request
    finally:
        _active.remove(request)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def current() -> StopRequest:
    """The request of the innermost :func:`stop_requests`, else one that never fires (a library caller
    keeps its own signal handling); either way :meth:`StopRequest.agreed` is the per-step collective."""
    return _active[-1] if _active else StopRequest()


# ---- progress hooks (tests and benchmarks: act at an exact block or step) --------------------------------

ProgressHook = Callable[[str, int], None]  # (stage "compress" | "finetune", blocks or steps done)
_hooks: list[ProgressHook] = []


def add_progress_hook(hook: ProgressHook) -> None:
    _hooks.append(hook)


def remove_progress_hook(hook: ProgressHook) -> None:
    """Take back a hook (scripts that score a model at chosen steps, then move on)."""
    _hooks.remove(hook)


def notify_progress(stage: str, done: int) -> None:
    """Called by the stages after each block/step, before they look at the stop request."""
    for hook in list(_hooks):
        hook(stage, done)
