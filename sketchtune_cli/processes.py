"""The one multi-process layer of every stage: the launcher's environment and accelerate's ``PartialState``.

``accelerate launch`` and ``torchrun`` describe a process's place in the job in environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); :func:`state` joins the process group they describe (NCCL on
GPUs, gloo on CPU) once per process and every stage uses it: compress for its collectives, finetune through
its ``Accelerator`` (built on the same state), eval to share out test examples.

No stage destroys the process group. Destroying it while a DDP reducer or a pending gloo collective still
holds Python tensors deadlocks in the interpreter (the group's destructor joins gloo's worker thread with
the GIL held while that thread waits for the GIL to release a tensor; seen at the end of preempted
fine-tunes). Instead the group lives until the process ends: :func:`end_worker` ends a launched worker
once everything is written and flushed.
"""
from __future__ import annotations

import logging
import os
import sys


def launch_rank() -> int:
    """This process's global rank as the launcher gave it (0 without a launcher); valid before, during and
    after the process group."""
    return int(os.environ.get("RANK", "0"))


def launch_local_rank() -> int:
    """This process's rank on its node (which GPU it drives)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launch_world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def state():
    """accelerate's per-process state; the first call joins the launcher's process group."""
    import torch
    from accelerate import PartialState

    # cpu=True on a CPU-only machine: without it accelerate ignores a torchrun gloo group and every process
    # would behave as the only one.
    return PartialState(cpu=not torch.cuda.is_available())


def end_worker(code: int) -> None:
    """End a launched worker now (after flushing logging and the standard streams), skipping the
    interpreter's teardown: see the module docstring. A no-op in a single process."""
    if launch_world_size() <= 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
