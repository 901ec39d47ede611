"""The compress pipeline (docs/method.md §2): decoder blocks one after another, each calibrated on the outputs
of the already-sketched blocks before it, and inside a block the "true sequential" sub-groups
([q,k,v], [o], [gate,up], [down]), each calibrated on the outputs of the sketched sub-groups before it.

Per sub-group: a hook accumulates the input Hessian its linears share while the block runs over the
calibration activations (stopping as soon as the group's input has been read), the Hessian is all-reduced
across ranks, the linears are sketched (shared out round-robin between ranks, each sketch broadcast from
its builder) and their weights replaced by ``W_hat`` in place. Then the block runs once more to produce the
next block's inputs. Only one block and the activations are on the device at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from sketchtune_kernels import group_size

from .. import preemption
from ..errors import UserError
from ..processes import launch_local_rank
from ..sketch import Sketch, decoder_layers, find_target_linears
from . import distributed, timing
from .blocks import (FinishedOutputs, StopForward, capture_block_inputs, feed_until, pre_hooks, run_block,
                     sequential_groups)
from .checkpoint import Checkpointer, ResumeState
from .distributed import DistContext
from .hessian import HessianAccumulator
from .settings import CompressSettings
from .sketcher import dequantize, sketch_layer

log = logging.getLogger(__name__)

# Per-layer numbers broadcast from the rank that sketched the layer, and stored in the manifest.
STAT_KEYS = ("rel_error", "damping", "damping_fraction", "dead_columns", "seconds", "refit_rounds")
SketchFn = Callable[[torch.Tensor, torch.Tensor, CompressSettings], tuple[Sketch, object]]
# on_layer(block_index, num_blocks, layer_name, stats) after each layer
LayerCallback = Callable[[int, int, str, dict], None]
# on_block(block_index, num_blocks, {layer_name: stats}) after each block
BlockCallback = Callable[[int, int, dict], None]


@dataclass
class CompressResult:
    sketches: dict[str, Sketch]  # LUTs in settings.lut_dtype, unpacked codes, on the CPU
    layers: dict[str, dict] = field(default_factory=dict)  # per-layer stats (STAT_KEYS + block)
    seconds: float = 0.0
    resumed_blocks: int = 0


def check_targets(targets: dict[str, nn.Module], settings: CompressSettings) -> None:
    """Every target must be splittable into ``groups_per_row`` groups: fail before any work is done."""
    if not targets:
        raise UserError("no linear layers to sketch: check compress.targets / compress.ignore")
    for name, lin in targets.items():
        try:
            group_size(lin.in_features, settings.groups_per_row, name)
        except ValueError as e:
            raise UserError(str(e)) from None


def compress_model(
    model: nn.Module,
    calib_ids: torch.Tensor,
    settings: CompressSettings,
    device: str | torch.device = "cpu",
    *,
    checkpoint_dir: str | Path | None = None,
    config_hash: str = "",
    resume: bool = False,
    on_layer: LayerCallback | None = None,
    on_block: BlockCallback | None = None,
    sketch_fn: SketchFn | None = None,
    dist: DistContext | None = None,
) -> CompressResult:
    """Sketch every target linear of ``model`` (on the CPU; blocks visit ``device`` one at a time) with the
    calibration windows ``calib_ids [N, L]``. The model's target weights end up replaced by ``W_hat``;
    the returned sketches convert it with ``replace_with_sketches``. ``checkpoint_dir`` enables block
    checkpoints, ``resume`` continues from them."""
    start = time.perf_counter()
    dist = dist or distributed.current()
    sketch_fn = sketch_fn or sketch_layer
    blocks_name, blocks = decoder_layers(model)
    targets = find_target_linears(model, settings.targets, settings.ignore)
    check_targets(targets, settings)
    if calib_ids.shape[0] < dist.world_size:
        raise UserError(f"{calib_ids.shape[0]} calibration samples cannot be shared by {dist.world_size} processes")
    local_ids = calib_ids[list(dist.shard(calib_ids.shape[0]))]
    ckpt = Checkpointer(checkpoint_dir, config_hash, dist, settings.bits) if checkpoint_dir else None
    state = ckpt.load(device, settings.offload_activations) if ckpt is not None and resume else None
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        with torch.no_grad():
            result = _run_blocks(model, blocks_name, blocks, targets, local_ids, settings, device, ckpt, state,
                                 on_layer, on_block, sketch_fn, dist)
    finally:
        model.config.use_cache = use_cache
    result.seconds = time.perf_counter() - start
    return result


def _run_blocks(model, blocks_name, blocks, targets, local_ids, settings, device, ckpt, state: ResumeState | None,
                on_layer, on_block, sketch_fn, dist) -> CompressResult:
    offload = settings.offload_activations
    if state is None:
        with timing.phase("forward"):
            inputs, block_kwargs = capture_block_inputs(model, blocks_name, local_ids, device, offload)
        result, first = CompressResult({}), 0
    else:  # only the block keyword arguments are needed again: capture them from one sequence
        _, block_kwargs = capture_block_inputs(model, blocks_name, local_ids[:1], device, offload)
        inputs, first = state.inputs, state.blocks_done
        result = CompressResult(dict(state.sketches), dict(state.results), resumed_blocks=first)
    for index in range(first, len(blocks)):
        prefix = f"{blocks_name}.{index}."
        linears = {n: m for n, m in targets.items() if n.startswith(prefix)}
        block, kwargs = blocks[index].to(device), block_kwargs[index]
        with FinishedOutputs(block, linears, device, store=inputs[0].device) as reuse:
            sketches, stats = compress_block(block, index, linears, inputs, kwargs, settings, device, sketch_fn,
                                             dist, lambda name, s: on_layer and on_layer(index, len(blocks), name, s),
                                             reuse)
            with timing.phase("forward"):
                inputs = run_block(block, inputs, kwargs, device, reuse=reuse)
        blocks[index].to("cpu")
        result.sketches.update(sketches)
        result.layers.update(stats)
        if ckpt is not None:
            ckpt.save_block(index, sketches, result.layers, inputs)
        if on_block:
            on_block(index, len(blocks), stats)
        if ckpt is not None:
            _stop_if_requested(index + 1, len(blocks), ckpt)
    return result


def _stop_if_requested(done: int, total: int, ckpt: Checkpointer) -> None:
    """After block ``done``'s checkpoint: stop here when any rank got SIGTERM/SIGUSR1 (one all-reduce)."""
    preemption.notify_progress("compress", done)
    request = preemption.current()
    if request.agreed()[0] and done < total:
        raise preemption.Interrupted(f"{request.name}: stopped after block {done} of {total}, checkpoint in "
                                     f"{ckpt.dir.parent}; run the same command with --resume to continue")


def compress_block(block, index, linears, inputs, kwargs, settings, device, sketch_fn, dist,
                   on_layer, reuse: FinishedOutputs) -> tuple[dict[str, Sketch], dict[str, dict]]:
    """Sketch one block's linears (already on ``device``), sub-group by sub-group, in place. ``reuse``
    (entered by the caller) is told which linears are done, so later feeds reuse what they computed."""
    if not linears:
        return {}, {}
    order = list(linears)  # model order: round-robin owners follow it
    sketches, stats = {}, {}
    with timing.phase("forward"):
        groups = sequential_groups(block, linears, inputs[0], kwargs, device)
    for group in groups:
        hessian = accumulate_hessian(block, {n: linears[n] for n in group}, inputs, kwargs, device, reuse)
        with timing.phase("hessian"):
            hessian.all_reduce_()
        owners = {name: dist.owner(order.index(name)) for name in group}
        built = {name: _sketch_one(linears[name], hessian, settings, sketch_fn)
                 for name in group if owners[name] == dist.rank}
        for name in group:
            sketch, layer_stats = _share(built.get(name), linears[name], settings, owners[name], dist)
            _write_back(linears[name], sketch)
            sketches[name] = Sketch(sketch.lut.cpu(), sketch.codes.cpu(), sketch.bits)
            stats[name] = {"block": index, **layer_stats}
            on_layer(name, stats[name])
        reuse.finish(group)
        del hessian
    return sketches, stats


def accumulate_hessian(block, group: dict[str, nn.Module], inputs, kwargs, device,
                       reuse: FinishedOutputs) -> HessianAccumulator:
    """The input Hessian of one sub-group over all (local) calibration inputs. Its linears read the very
    same input (that is what makes them a group), so one accumulator serves them all. The forward stops
    at the group's first linear: nothing after it is computed."""
    first = next(iter(group.values()))
    acc = HessianAccumulator(first.in_features, device=first.weight.device)

    def add(_name: str, x: torch.Tensor) -> None:
        with timing.phase("hessian"):
            acc.add(x)
        raise StopForward

    with pre_hooks({n: m for n, m in group.items() if m is first}, add), timing.phase("forward"):
        feed_until(block, inputs, kwargs, device, reuse)
    return acc


def _sketch_one(linear: nn.Module, acc: HessianAccumulator, settings: CompressSettings, sketch_fn: SketchFn):
    """Run the layer algorithm on this rank; stats become a plain dict of the STAT_KEYS."""
    W = linear.weight.detach().to(torch.float32)
    t0 = time.perf_counter()
    sketch, raw = sketch_fn(W, acc.hessian, settings)
    seconds = time.perf_counter() - t0
    raw = raw.as_dict() if hasattr(raw, "as_dict") else dict(raw or {})
    stats = {key: raw.get(key) for key in STAT_KEYS}  # in STAT_KEYS order, as the manifest has them
    stats.update(rel_error=raw.get("relative_error", raw.get("rel_error")), seconds=seconds)
    return sketch, stats


def _share(built, linear: nn.Module, settings: CompressSettings, owner: int, dist: DistContext):
    """The sketch and stats of one layer on every rank: broadcast from the rank that built it. The LUT
    travels as float32 (exact for bf16/fp16 values) and goes back to its dtype."""
    if not dist.enabled:
        return built
    rows, cols, G = linear.out_features, linear.in_features, settings.groups_per_row
    dev = linear.weight.device if distributed.uses_nccl() else torch.device("cpu")
    lut_dtype = getattr(torch, settings.lut_dtype)
    if built is not None:
        sketch, stats = built
        lut = sketch.lut.to(dev, torch.float32).contiguous()
        codes = sketch.codes.to(dev, torch.uint8).contiguous()
        numbers = torch.tensor([_num(stats[k]) for k in STAT_KEYS], dtype=torch.float64, device=dev)
    else:
        lut = torch.empty(rows, G, 2 ** settings.bits, dtype=torch.float32, device=dev)
        codes = torch.empty(rows, G, cols // G, dtype=torch.uint8, device=dev)
        numbers = torch.empty(len(STAT_KEYS), dtype=torch.float64, device=dev)
    for t in (lut, codes, numbers):
        dist.broadcast_(t, owner)
    stats = {k: (None if v != v else v) for k, v in zip(STAT_KEYS, numbers.tolist())}  # NaN = not reported
    for key in ("dead_columns", "refit_rounds"):
        if stats[key] is not None:
            stats[key] = int(stats[key])
    return Sketch(lut.to(lut_dtype), codes, settings.bits), stats


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _write_back(linear: nn.Module, sketch: Sketch) -> None:
    """``W <- W_hat`` so the layers after this one calibrate on the sketched model."""
    linear.weight.data.copy_(dequantize(sketch).to(linear.weight.device, linear.weight.dtype))


def resolve_device(name: str, dist: DistContext | None = None) -> torch.device:
    """``auto``: this rank's CUDA device when there is one, else the CPU. ``cuda`` without CUDA is a UserError."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise UserError("--device cuda was asked but CUDA is not available; use --device cpu or auto")
        return torch.device("cpu")
    return torch.device("cuda", launch_local_rank() if (dist or distributed.current()).enabled else torch.cuda.current_device())
