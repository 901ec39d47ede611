"""What compress needs from torch.distributed, as one small object that is a no-op in a single process.

Under ``accelerate launch`` / ``torchrun`` every rank takes its share of the calibration samples, the
per-layer Hessian sums and counts are all-reduced, the linears of a sub-group are shared out round-robin,
and each finished sketch is broadcast from the rank that built it, so every rank continues from the same
sketched weights. Only rank 0 writes the artifact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import processes


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's samples: a contiguous slice, sizes differing by at most one."""
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (1 if self.rank < extra else 0))

    def owner(self, index: int) -> int:
        """Round-robin: which rank sketches the ``index``-th layer of a sub-group."""
        return index % self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if self.enabled:
            dist.broadcast(tensor, src)
        return tensor

    def all_max(self, value: float) -> float:
        """The largest of a float over ranks (e.g. to agree on an error flag)."""
        if not self.enabled:
            return value
        device = torch.device("cuda", torch.cuda.current_device()) if uses_nccl() else torch.device("cpu")
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())


def current() -> DistContext:
    """The context of this process: from an initialised process group, else single-process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def init_from_env() -> DistContext:
    """Join the process group a launcher (torchrun, accelerate launch) describes, through the one
    multi-process layer (:mod:`sketchtune_cli.processes`). Single process without a launcher."""
    if processes.launch_world_size() <= 1:
        return current()
    state = processes.state()
    return DistContext(state.process_index, state.num_processes)


def uses_nccl() -> bool:
    """NCCL collectives need CUDA tensors; gloo takes CPU ones."""
    return dist.is_initialized() and dist.get_backend() == "nccl"
