"""End-to-end LUT distillation after the layer-wise build (issue 18; AQLM's PV-tuning idea for sketches):
the codes stay frozen and the LUTs train so the sketched model's next-token distributions match the dense
model's on the calibration sequences. The loss is KL(teacher || student) summed over every next-token
position. ``compress.distill_teacher`` says where the teacher's side comes from:

- ``online``: the teacher's logits computed on the fly (teacher and student both on the device; exact KL).
- ``topk``: one teacher pass first keeps, per calibration position, its ``distill_topk`` most likely next
  tokens with their log-probabilities and the log-probability of all other tokens together (written to the
  artifact's ``.partial`` directory, so a resume reuses it); then the teacher leaves memory. The KL is taken
  between the two distributions coarsened to those tokens plus one "rest" bucket: a lower bound of the full
  KL that equals it when the kept tokens carry all the teacher's mass. For when teacher and student do not
  fit on the device together (``estimate.distill_memory_plan`` offers it).

The loop is :class:`sketchtune_cli.training.trainer.Trainer` (Accelerate, exact resume, preemption, the
finetune stage's machinery) with this loss; its checkpoints live in the compress artifact's ``.partial``
directory, so `compress --resume` continues an interrupted distillation bit for bit on CPU. Under a launcher
(torchrun, accelerate launch) every process holds the whole student (compress broadcasts each sketch) and
the Trainer shares each batch out data-parallel, as in finetune."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .. import processes
from ..training.batches import IGNORE, Datasets, Example
from ..training.settings import TrainSettings
from ..training.trainer import Trainer, make_accelerator
from .checkpoint import atomic_save
from .settings import CompressSettings

log = logging.getLogger(__name__)

DISTILL_DIR = "distill"  # inside the artifact's .partial directory; removed once the sketch is written
TOPK_FILE = "teacher_topk.safetensors"  # in DISTILL_DIR: the topk teacher's targets


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


def coarse_log_probs(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``logits [..., V]``: the log-probabilities of the tokens in ``index [..., k]`` and of all other
    tokens together ``[...]``, in float32. When ``index`` holds every token the rest's log-probability is
    about -3.4e38 rather than -inf: a zero-mass bucket then adds 0 to the KL and no NaN to its gradient
    (the log-sum-exp of only -inf has a NaN gradient, even behind ``torch.where``)."""
    logits = logits.float()
    lse = logits.logsumexp(-1)
    picked = logits.gather(-1, index) - lse.unsqueeze(-1)
    rest = logits.scatter(-1, index, torch.finfo(torch.float32).min).logsumexp(-1) - lse
    return picked, rest


def coarse_kl(log_p: torch.Tensor, log_p_rest: torch.Tensor, log_q: torch.Tensor,
              log_q_rest: torch.Tensor) -> torch.Tensor:
    """KL(p || q) between two distributions over k tokens plus a rest bucket."""
    return (log_p.exp() * (log_p - log_q)).sum(-1) + log_p_rest.exp() * (log_p_rest - log_q_rest)


def teacher_topk(teacher: torch.nn.Module, calib_ids: torch.Tensor, k: int, micro_batch: int) -> dict:
    """One pass of ``teacher`` (on the device it sits on) over ``calib_ids [N, T]``: at each next-token
    position 0..T-2 its ``k`` most likely tokens (``index`` int32 [N, T-1, k]), their log-probabilities
    (``log_p`` float32) and the other tokens' together (``log_p_rest`` float32 [N, T-1]), on the CPU."""
    device = next(teacher.parameters()).device
    k = min(k, teacher.config.vocab_size)
    columns = torch.arange(calib_ids.shape[1] - 1, device=device)
    parts = []
    with torch.no_grad():
        for start in range(0, calib_ids.shape[0], micro_batch):
            ids = calib_ids[start:start + micro_batch].to(device)
            logits = teacher(input_ids=ids, use_cache=False, logits_to_keep=columns).logits.float()
            index = logits.topk(k, dim=-1).indices
            log_p, log_p_rest = coarse_log_probs(logits, index)
            parts.append((index.int().cpu(), log_p.cpu(), log_p_rest.cpu()))
    return {name: torch.cat([p[i] for p in parts]).contiguous()
            for i, name in enumerate(("index", "log_p", "log_p_rest"))}


class TopKTeacherKL:
    """``loss_fn`` for the Trainer from precomputed :func:`teacher_topk` targets: the coarsened KL summed over
    the target positions of a batch. A batch row is found by its tokens (the same sequence has the same
    teacher distribution wherever it sits in the calibration set)."""

    def __init__(self, targets: dict, calib_ids: torch.Tensor):
        self.targets = targets
        self.row_of = {tuple(row): i for i, row in enumerate(calib_ids.tolist())}

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        rows = torch.tensor([self.row_of[tuple(r)] for r in batch["input_ids"].tolist()])
        cols = batch["columns"].cpu()
        pick = {name: t[rows][:, cols].to(logits.device) for name, t in self.targets.items()}
        log_q, log_q_rest = coarse_log_probs(logits, pick["index"].long())
        kl = coarse_kl(pick["log_p"], pick["log_p_rest"], log_q, log_q_rest)
        return (kl * (batch["targets"] != IGNORE)).sum()


def _topk_targets(load_teacher: Callable, calib_ids: torch.Tensor, s: CompressSettings, device: torch.device,
                  root: Path) -> dict:
    """The topk teacher's targets: read from ``root`` (a resumed distillation) or computed with a teacher
    that is freed before the student trains, then written there atomically. With several processes the
    main one computes them and the others read its file (``root`` is on storage they share)."""
    path = root / TOPK_FILE
    state = processes.state() if processes.launch_world_size() > 1 else None
    if not path.is_file() and (state is None or state.is_main_process):
        teacher = load_teacher().to(device).eval().requires_grad_(False)
        log.info("distillation: one teacher pass keeps its top %d next tokens at %d positions", s.distill_topk,
                 calib_ids.shape[0] * (calib_ids.shape[1] - 1))
        targets = teacher_topk(teacher, calib_ids, s.distill_topk, s.distill_micro_batch_size)
        del teacher
        atomic_save(targets, path)
    if state is not None:
        state.wait_for_everyone()
    return load_file(str(path))


def loop_settings(s: CompressSettings) -> TrainSettings:
    """The Trainer's settings for a distillation: constant learning rate after a linear warm-up."""
    return TrainSettings(lr=s.distill_lr, max_steps=s.distill_steps, batch_size=s.distill_batch_size,
                         micro_batch_size=s.distill_micro_batch_size, warmup_steps=s.distill_warmup_steps,
                         scheduler="constant", seed=s.seed, log_every=10,
                         gradient_checkpointing=s.distill_gradient_checkpointing)


def distill_problems(s: CompressSettings, world_size: int) -> list[str]:
    """Each of ``world_size`` processes takes whole micro-batches of every optimizer step (the Trainer's
    data-parallel plan), so the batch must split evenly."""
    if s.distill_steps and s.distill_batch_size % (s.distill_micro_batch_size * world_size):
        return [f"compress.distill_batch_size={s.distill_batch_size} must be a multiple of "
                f"compress.distill_micro_batch_size x processes = {s.distill_micro_batch_size} x {world_size}"]
    return []


def distill(student: torch.nn.Module, load_teacher: Callable[[], torch.nn.Module], tokenizer,
            calib_ids: torch.Tensor, s: CompressSettings, device: torch.device, partial: Path, fingerprint: str,
            resume: bool) -> dict:
    """Train ``student``'s LUTs (SketchedLinear layers, float32 LUTs) toward the dense model that
    ``load_teacher()`` returns (on the CPU), on ``calib_ids`` ``[samples, seq_len]`` on ``device``; returns
    the Trainer's summary plus the loss curve ``[[step, loss], ...]``."""
    root = Path(partial) / DISTILL_DIR
    root.mkdir(parents=True, exist_ok=True)
    if s.distill_teacher == "topk":  # the teacher is gone before the student moves to the device
        loss_fn = TopKTeacherKL(_topk_targets(load_teacher, calib_ids, s, device, root), calib_ids)
    else:
        loss_fn = TeacherKL(load_teacher().to(device).eval().requires_grad_(False))
    settings = loop_settings(s)
    accelerator = make_accelerator(settings, root, trackers=[], cpu=device.type == "cpu")
    data = Datasets(train=[Example(ids, ids) for ids in calib_ids.tolist()], val=None)
    trainer = Trainer(accelerator, student, tokenizer, data, settings, root, fingerprint, resume=resume,
                      loss_fn=loss_fn, stage="distill")
    summary = trainer.run()
    summary["loss_curve"] = [[step, loss] for step, loss in trainer.metrics.train_losses()]
    student.eval()
    return summary
