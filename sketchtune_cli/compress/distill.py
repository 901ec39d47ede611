"""End-to-end LUT distillation after the layer-wise build (issue 18; AQLM's PV-tuning idea for sketches):
the codes stay frozen and the LUTs train so the sketched model's next-token distributions match the dense
model's on the calibration sequences. The loss is KL(teacher || student) summed over every next-token
position, with the teacher's logits computed on the fly (teacher and student both on the device).

The loop is :class:`sketchtune_cli.training.trainer.Trainer` (Accelerate, exact resume, preemption, the
finetune stage's machinery) with this loss; its checkpoints live in the compress artifact's ``.partial``
directory, so `compress --resume` continues an interrupted distillation bit for bit on CPU."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ..training.batches import IGNORE, Datasets, Example
from ..training.trainer import LoopSettings, Trainer, make_accelerator
from .settings import CompressSettings

log = logging.getLogger(__name__)

DISTILL_DIR = "distill"  # inside the artifact's .partial directory; removed once the sketch is written


class TeacherKL:
    """``loss_fn`` for the Trainer: summed KL(teacher || student) over the target positions of a batch."""

    def __init__(self, teacher: torch.nn.Module):
        self.teacher = teacher

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """``logits``: the student's at ``batch["columns"]``; the teacher's are taken at the same columns."""
        with torch.no_grad():
            target = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  use_cache=False, logits_to_keep=batch["columns"]).logits.float()
        log_p = F.log_softmax(target, -1)
        log_q = F.log_softmax(logits.float(), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        return (kl * (batch["targets"] != IGNORE)).sum()


def loop_settings(s: CompressSettings) -> LoopSettings:
    """The Trainer's settings for a distillation: constant learning rate after a linear warm-up."""
    return LoopSettings(lr=s.distill_lr, max_steps=s.distill_steps, batch_size=s.distill_batch_size,
                        micro_batch_size=s.distill_micro_batch_size, warmup_steps=s.distill_warmup_steps,
                        scheduler="constant", seed=s.seed, log_every=10,
                        gradient_checkpointing=s.distill_gradient_checkpointing)


def distill_problems(s: CompressSettings, world_size: int) -> list[str]:
    if not s.distill_steps:
        return []
    problems = []
    if s.distill_batch_size % s.distill_micro_batch_size:
        problems.append(f"compress.distill_batch_size={s.distill_batch_size} must be a multiple of "
                        f"compress.distill_micro_batch_size={s.distill_micro_batch_size}")
    if world_size > 1:
        problems.append("compress.distill_steps runs in one process for now: launch compress without torchrun, "
                        "or set compress.distill_steps=0")
    return problems


def distill(student: torch.nn.Module, teacher: torch.nn.Module, tokenizer, calib_ids: torch.Tensor,
            s: CompressSettings, device: torch.device, partial: Path, fingerprint: str, resume: bool) -> dict:
    """Train ``student``'s LUTs (SketchedLinear layers, float32 LUTs) toward ``teacher`` on ``calib_ids``
    ``[samples, seq_len]`` on ``device``; returns the Trainer's summary plus the loss curve
    ``[[step, loss], ...]``."""
    root = Path(partial) / DISTILL_DIR
    root.mkdir(parents=True, exist_ok=True)
    settings = loop_settings(s)
    accelerator = make_accelerator(settings, root, trackers=[], cpu=device.type == "cpu")
    teacher.to(accelerator.device).eval().requires_grad_(False)
    data = Datasets(train=[Example(ids, ids) for ids in calib_ids.tolist()], val=None)
    trainer = Trainer(accelerator, student, tokenizer, data, settings, root, fingerprint, resume=resume,
                      loss_fn=TeacherKL(teacher), stage="distill")
    summary = trainer.run()
    summary["loss_curve"] = [[step, loss] for step, loss in trainer.metrics.train_losses()]
    student.eval()
    return summary
