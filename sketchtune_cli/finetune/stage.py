"""The finetune stage: resolve base and output, load, train, write the fine-tune artifact.

Artifact layout: ``lut_adapter.safetensors`` (trained LUTs only, fp32, keys ``<module>.lut``),
``metrics.jsonl``, ``loss_curve.png``, ``sketchtune.json`` (parent = the base
sketch with its content hash, resolved config, results) and ``checkpoints/`` (resume state; not hashed,
because a resumed run rewrites it). Every check that can fail on bad input runs before anything is written,
so an error never costs an existing artifact or an interrupted run's checkpoints. Tracker files go beside
the artifact (:mod:`sketchtune_cli.tracking`), not into it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import preemption, stages, tracking
from ..artifacts import Manifest, check_output, is_artifact, partial_dir, write_artifact
from ..errors import UserError
from ..loading import LUT_ADAPTER, artifact, load_sketch_artifact
from ..models import torch_dtype
from ..output_lock import OutputLocked
from .data import build_datasets
from ..training import checkpoint as ckpt
from ..training.metrics import LOSS_PLOT, plot_losses
from ..training.trainer import Trainer, make_accelerator
from .settings import RESULT_FREE, SECTIONS

log = logging.getLogger(__name__)


def resolve_base(cfg, known: Manifest | None = None) -> Manifest:
    """The sketch to fine-tune, verified: ``known`` (its manifest, as `sketchtune run` holds it), else
    --base / train.base, else ``output_dir/compress`` (as `sketchtune run` lays it out)."""
    base = known if known is not None else cfg.train.base or str(Path(cfg.output_dir) / "compress")
    if known is None and not cfg.train.base and not is_artifact(base):
        raise UserError(f"no base sketch: pass --base SKETCH_DIR or set train.base (looked for {base})")
    return artifact(base, "sketch")


def default_output(cfg) -> Path:
    return Path(cfg.output_dir) / "finetune"


def run_config(cfg, base: Manifest) -> dict:
    sections = cfg.section_dict("model", "data", "train")
    sections["train"]["base"] = str(Path(base.path).resolve())
    return sections


def fingerprint(sections: dict, base: Manifest) -> str:
    """What must not change between an interrupted run and its resume: data, training recipe, base (by its
    content hash; its path may change)."""
    train = stages.results_config(SECTIONS, RESULT_FREE, sections)["train"]
    blob = json.dumps({"data": sections["data"], "train": train, "base": base.content_hash,
                       "model_dtype": sections["model"]["dtype"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_resume(out: Path, fp: str) -> bool:
    """True when an interrupted run's checkpoint exists; refuses one made with another configuration."""
    found = ckpt.first_readable_state(partial_dir(out))
    if found is None:
        return False
    state = found[1]
    if state.get("fingerprint") != fp:
        raise UserError(
            f"cannot resume {partial_dir(out)}: it was started with another data/train config or base; "
            f"restore that config, or drop --resume and delete {partial_dir(out)} to start over"
        )
    return True


def run_finetune(cfg, output: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                 base: Manifest | None = None) -> Path:
    """Fine-tune the LUTs of a sketch per ``cfg``; returns the artifact path (on every process). ``base``:
    the base sketch's manifest when the caller has read it already (``cfg.train.base`` is then not read)."""
    out = Path(output) if output else default_output(cfg)
    base = resolve_base(cfg, base)
    check_output(out, overwrite, resume)
    accelerator = make_accelerator(cfg.train, partial_dir(out) / "logs", tracking.make_trackers(cfg, "finetune", out))
    if not accelerator.is_main_process:  # one copy of progress and warnings, from the main process
        logging.getLogger("sketchtune_cli").setLevel(logging.ERROR)
    sections = run_config(cfg, base)
    fp = fingerprint(sections, base)
    resuming = resume and check_resume(out, fp)
    dtype = torch_dtype(cfg.model.dtype, str(accelerator.device))
    model, tokenizer, _ = load_sketch_artifact(base, device=accelerator.device, dtype=dtype)
    data = build_datasets(cfg.data, tokenizer, seed=cfg.train.seed)
    accelerator.wait_for_everyone()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with preemption.stop_requests():  # SIGTERM/SIGUSR1: checkpoint after the step in hand, exit 75
            if accelerator.is_main_process:
                _train_and_write(accelerator, cfg, model, tokenizer, data, base, out, sections, fp, resuming, resume, overwrite)
            else:
                trainer = Trainer(accelerator, model, tokenizer, data, cfg.train, partial_dir(out), fp, resuming, write=False)
                trainer.run()
                if trainer.fsdp:  # the main process gathers the final sharded LUTs: a collective
                    trainer.lut_tensors()
        accelerator.wait_for_everyone()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        # flush the trackers' files (interrupted or not); the process group stays (see processes.py)
        for tracker in accelerator.trackers:
            tracker.finish()
    return out


def _train_and_write(accelerator, cfg, model, tokenizer, data, base, out, sections, fp, resuming, resume, overwrite):
    try:
        with write_artifact(out, "finetune", sections, parent=base, overwrite=overwrite, resume=resume,
                            keep_partial_on_error=True, unhashed=("checkpoints/",)) as writer:
            if accelerator.log_with:
                tracked = {sec: sections[sec] for sec in ("data", "train")}
                accelerator.init_trackers(cfg.logging.project, config=tracking.flat_config(tracked))
            trainer = Trainer(accelerator, model, tokenizer, data, cfg.train, writer.path, fp, resuming)
            results = trainer.run()
            for tracker in accelerator.trackers:  # flush event files before they are hashed
                tracker.finish()
            save_file(trainer.lut_tensors(), str(writer.path / LUT_ADAPTER), metadata={"format": "pt"})
            if cfg.logging.plots:
                plot_losses(trainer.metrics, writer.path / LOSS_PLOT)
            writer.results = {**results, "data": data.stats, "lut_dtype": "float32"}
    except OutputLocked:  # another run's directory (or an interrupted one to resume): not ours to clean
        raise
    except BaseException:
        # keep the partial directory only when it holds a checkpoint worth resuming
        if ckpt.latest_checkpoint(partial_dir(out)) is None:
            shutil.rmtree(partial_dir(out), ignore_errors=True)
        raise
