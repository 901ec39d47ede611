"""The compress stage end to end: config -> model + calibration -> pipeline -> sketch artifact.

Everything that can be wrong with the input (model name, groups_per_row, calibration source, existing
output, a resume of another configuration) is checked before the artifact directory is created, so bad
input leaves nothing behind. Once work starts, the ``.partial`` directory is kept on failure: it holds the
block checkpoints ``--resume`` continues from.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import preemption, stages, tracking
from ..artifacts import check_output, partial_dir, write_artifact
from ..errors import UserError
from ..models import check_seq_len, load_model, load_model_config, torch_dtype
from ..sketch import find_target_linears, replace_with_sketches, save_sketch, sketched_layers
from . import distributed
from .calibration import load_calibration
from .checkpoint import CHECKPOINT_DIR, check_resumable
from .distill import DISTILL_DIR, distill, distill_problems
from .pipeline import check_targets, compress_model, resolve_device
from .reporting import PLOT_NAME, LayerProgress, plot_errors, print_summary, summarize
from .settings import RESULT_FREE, SECTIONS

log = logging.getLogger(__name__)


def default_output(model_name: str, bits: int, groups_per_row: int) -> Path:
    """``runs/<model-name>-sketch-b{bits}g{G}``."""
    name = Path(model_name.rstrip("/")).name.removesuffix(".gguf") or "model"
    return Path("runs") / f"{name}-sketch-b{bits}g{groups_per_row}"


def resume_hash(config: dict) -> str:
    """Hash of the settings a checkpoint depends on: the stage's fingerprint (its result-free keys, which a
    resume may change, left out), the same one `sketchtune run` compares."""
    return stages.fingerprint(SECTIONS, RESULT_FREE, config)


def run_compress(cfg: stages.StageConfig, output: str | Path | None = None, *, resume: bool = False,
                 overwrite: bool = False, plot: bool = False) -> Path:
    """Compress ``cfg.model.name`` with ``cfg.compress`` into a sketch artifact; returns its path (on every
    rank; only rank 0 writes)."""
    start = time.perf_counter()
    dist = distributed.init_from_env()
    settings = cfg.compress
    out = Path(output or default_output(cfg.model.name, settings.bits, settings.groups_per_row))
    config = cfg.section_dict("model", "compress")
    chash = resume_hash(config)
    check_output(out, overwrite, resume)
    if resume:
        check_resumable(partial_dir(out) / CHECKPOINT_DIR, chash, dist.world_size)
    check_seq_len(load_model_config(cfg.model.name), settings.seq_len, "--seq-len")
    device = resolve_device(settings.device, dist)
    model, tokenizer = load_model(cfg.model.name, dtype=torch_dtype(cfg.model.dtype, str(device)), device="cpu")
    targets = find_target_linears(model, settings.targets, settings.ignore)
    check_targets(targets, settings)
    calib = load_calibration(settings.calib, tokenizer, settings.num_samples, settings.seq_len, settings.seed,
                             settings.calib_encoding)
    if calib.num_samples < dist.world_size:
        raise UserError(f"{calib.num_samples} calibration samples cannot be shared by {dist.world_size} processes")
    for problem in distill_problems(settings, dist.world_size):
        raise UserError(problem)
    log.info("compress %s -> %s: %d x %d calibration tokens from %s, %d bits, %d groups per row, device %s%s",
             cfg.model.name, out, calib.num_samples, settings.seq_len, settings.calib, settings.bits,
             settings.groups_per_row, device, f", {dist.world_size} processes" if dist.enabled else "")
    with _artifact(out, config, overwrite, resume, dist) as writer:
        dist.barrier()  # rank 0 has created the .partial directory the checkpoints go to
        ckpt_dir = Path(writer.path) / CHECKPOINT_DIR
        order = {name: i for i, name in enumerate(targets)}
        with preemption.stop_requests(), LayerProgress(len(order), enabled=dist.is_main) as progress, \
                tracking.StageLog(cfg, "compress", out, config, enabled=dist.is_main) as tracker:
            def on_layer(block, blocks, name, stats):  # progress bar, and the tracker (step = layer index)
                progress.update(block, blocks, name, stats)
                tracker.log({"rel_error": stats.get("rel_error"), "layer_seconds": stats.get("seconds")}, step=order[name])

            result = compress_model(model, calib.input_ids, settings, device, checkpoint_dir=ckpt_dir,
                                    config_hash=chash, resume=resume, on_layer=on_layer,
                                    on_block=progress.block_done, dist=dist)
        distilled = None
        if settings.distill_steps:  # every process: the whole student, its share of each batch
            with preemption.stop_requests():
                distilled = _distill(cfg, model, tokenizer, result, calib, device, writer.path, chash, resume)
        if dist.is_main:
            _save(model, tokenizer, result, settings, calib, writer.path, sketched=distilled is not None)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(Path(writer.path) / DISTILL_DIR, ignore_errors=True)
            if distilled is not None:
                writer.results["distill"] = distilled
            summary = summarize(result.layers)
            wall = time.perf_counter() - start
            if plot:
                plot_errors(result.layers, Path(writer.path) / PLOT_NAME)
            writer.results.update(layers=result.layers, summary=summary, calibration=calib.describe(),
                                  world_size=dist.world_size, device=str(device), wall_seconds=round(wall, 2),
                                  resumed_blocks=result.resumed_blocks)
            print_summary(summary, wall)
    dist.barrier()
    return out


def _distill(cfg, model, tokenizer, result, calib, device, partial, chash: str, resume: bool) -> dict:
    """The layer-wise sketch becomes SketchedLinear layers with float32 LUTs and trains toward a fresh copy
    of the dense model (compress/distill.py); returns the distillation's summary and loss curve."""
    replace_with_sketches(model, result.sketches, lut_dtype=torch.float32)

    def load_teacher():
        return load_model(cfg.model.name, dtype=torch_dtype(cfg.model.dtype, str(device)), device="cpu")[0]

    summary = distill(model, load_teacher, tokenizer, calib.input_ids, cfg.compress, device, partial, chash, resume)
    model.to("cpu")
    keep = ("steps", "first_loss", "final_loss", "train_seconds", "tokens", "loss_curve")
    return {k: summary[k] for k in keep if k in summary}


def _save(model, tokenizer, result, settings, calib, directory, sketched: bool = False) -> None:
    """Convert the model to SketchedLinear layers (unless ``sketched`` already: the distilled LUTs) and
    write it as an HF directory."""
    if settings.dtype != "auto":
        model.to(torch_dtype(settings.dtype))
    if sketched:
        for layer in sketched_layers(model).values():
            layer.lut.data = layer.lut.data.to(getattr(torch, settings.lut_dtype))
    else:
        replace_with_sketches(model, result.sketches, lut_dtype=getattr(torch, settings.lut_dtype))
    save_sketch(model, tokenizer, directory, calibration=calib.source, num_samples=calib.num_samples,
                seq_len=int(calib.input_ids.shape[1]), seed=settings.seed)


@contextlib.contextmanager
def _artifact(out: Path, config: dict, overwrite: bool, resume: bool, dist):
    if dist.is_main:
        with write_artifact(out, "sketch", config, overwrite=overwrite, resume=resume,
                            keep_partial_on_error=True) as writer:
            yield writer
    else:
        yield SimpleNamespace(path=partial_dir(out))  # what other ranks see of the writer: the shared .partial path
