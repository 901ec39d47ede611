"""Block checkpoints for ``compress --resume``, kept in the artifact's ``.partial`` directory.

After each finished block: every rank writes the next block's inputs (its share of the calibration
activations), rank 0 writes the block's sketches (LUTs + unpacked codes) and then ``state.json``
(config hash, world size, blocks done, per-layer results). ``state.json`` is replaced atomically and
written last, so it never points at a file that is not complete; input files are deleted two blocks later,
so the checkpoint before the latest stays usable: a resume that cannot read the latest (a truncated file, a
bad disk block) says so in one line and continues from the one before. Saving the activations rather than
recomputing them makes a resumed run bit-identical to an uninterrupted one. Safetensors + JSON only. (Tests
kill a run at an exact block with a progress hook, see :mod:`sketchtune_cli.preemption`.)
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..sketch import Sketch
from .distributed import DistContext

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE = "state.json"
STATE_FORMAT = "sketchtune.compress-checkpoint/1"
# what a damaged checkpoint file raises when read (a truncated safetensors, a missing or renamed tensor)
READ_ERRORS = (OSError, SafetensorError, KeyError, ValueError, RuntimeError)


@dataclass
class ResumeState:
    blocks_done: int
    results: dict[str, dict]
    sketches: dict[str, Sketch]
    inputs: list[torch.Tensor]


def read_state(directory: Path) -> dict | None:
    path = Path(directory) / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt; delete {directory.parent} and start over") from None
    if state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} was written by another sketchtune version; delete {directory.parent} and start over")
    return state


def check_resumable(directory: Path, config_hash: str, world_size: int) -> int:
    """Blocks already done in ``directory`` (0 when there is nothing to resume). A checkpoint written with
    another configuration or number of processes is a UserError: its sketches would not match."""
    state = read_state(directory)
    if state is None:
        return 0
    if state["config_hash"] != config_hash:
        raise UserError(
            f"cannot resume: {directory.parent} was started with a different configuration "
            f"(hash {state['config_hash']} vs {config_hash}); use the same settings or delete it"
        )
    if state["world_size"] != world_size:
        raise UserError(
            f"cannot resume: {directory.parent} was started with {state['world_size']} processes, this run has "
            f"{world_size}; relaunch with the same number"
        )
    return int(state["blocks_done"])


class Checkpointer:
    """Writes and reads the block checkpoints of one compress run."""

    def __init__(self, directory: str | Path, config_hash: str, dist: DistContext, bits: int):
        self.dir = Path(directory)
        self.config_hash, self.dist, self.bits = config_hash, dist, bits

    def _inputs_file(self, block: int) -> Path:
        return self.dir / f"inputs-rank{self.dist.rank}-block{block:04d}.safetensors"

    def _block_file(self, block: int) -> Path:
        return self.dir / f"block{block:04d}.safetensors"

    def load(self, device, offload: bool) -> ResumeState | None:
        """The state to continue from, or None to start from block 0."""
        done = check_resumable(self.dir, self.config_hash, self.dist.world_size)
        if done == 0:
            return None
        state = read_state(self.dir)
        problem = ""
        for blocks in (done, done - 1):  # the latest checkpoint, else the one before it (0: the start)
            try:
                resumed, ok = self._read(blocks, state["results"]), 1.0
            except READ_ERRORS as e:
                resumed, ok = None, 0.0
                problem = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                log.warning("cannot read the checkpoint after %d blocks in %s (%s)", blocks, self.dir, problem)
            if -self.dist.all_max(-ok) < 1.0:  # every rank must resume from the same block
                continue
            if blocks < done:
                log.warning("resuming from the previous checkpoint (after %d blocks)", blocks)
            if blocks == 0:
                return None
            log.info("resuming after %d finished blocks (%s)", blocks, self.dir.parent)
            store = "cpu" if offload else device  # moved only now: a device error is not a damaged file
            resumed.inputs = [h.to(store) for h in resumed.inputs]
            return resumed
        raise UserError(f"no readable checkpoint in {self.dir} ({problem}); delete {self.dir.parent} and run "
                        f"without --resume to start over")

    def _read(self, blocks: int, results: dict) -> ResumeState | None:
        """The state after ``blocks`` finished blocks, read in full (on the CPU) before anything uses it."""
        if blocks == 0:
            return None
        sketches: dict[str, Sketch] = {}
        for b in range(blocks):
            sketches.update(self._read_sketches(self._block_file(b)))
        hidden = load_file(str(self._inputs_file(blocks)))["hidden"]
        inputs = [h.unsqueeze(0) for h in hidden]
        return ResumeState(blocks, {k: v for k, v in results.items() if k in sketches}, sketches, inputs)

    def _read_sketches(self, path: Path) -> dict[str, Sketch]:
        tensors = load_file(str(path))
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        return {n: Sketch(tensors[f"{n}.lut"], tensors[f"{n}.codes"], self.bits) for n in names}

    def save_block(self, block: int, sketches: dict[str, Sketch], results: dict[str, dict],
                   next_inputs: list[torch.Tensor]) -> None:
        """Checkpoint block ``block`` (0-based) as finished; ``results`` holds all layers so far."""
        self.dir.mkdir(parents=True, exist_ok=True)
        hidden = torch.cat([x.detach().cpu() for x in next_inputs]) if next_inputs else torch.empty(0)
        atomic_save({"hidden": hidden.contiguous()}, self._inputs_file(block + 1))
        if self.dist.is_main:
            tensors = {}
            for name, s in sketches.items():
                tensors[f"{name}.lut"] = s.lut.detach().cpu().contiguous()
                tensors[f"{name}.codes"] = s.codes.detach().cpu().contiguous()
            atomic_save(tensors, self._block_file(block))
        self.dist.barrier()
        if self.dist.is_main:
            state = {"format": STATE_FORMAT, "config_hash": self.config_hash, "world_size": self.dist.world_size,
                     "blocks_done": block + 1, "results": results}
            tmp = self.dir / (STATE + ".tmp")
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            os.replace(tmp, self.dir / STATE)
        self.dist.barrier()
        self._inputs_file(block - 1).unlink(missing_ok=True)  # keeps this block's inputs: the fallback


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``save_file`` to a temporary name, then renamed over ``path``: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)

