"""The fine-tuning loop on Accelerate: only the LUTs train (METHOD.md §3).

Why the loop is hand-written rather than a dataloader + ``accelerator.accumulate``: exact resume and
process-count-independent results need full control of which examples form each step (see
:mod:`.order`) and of the loss normalisation. The loss of an optimizer step is the mean over all response
tokens of the whole effective batch (all micro batches, all processes), so 1 process with 4 micro batches
and 2 processes with 2 each compute the same gradient.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..sketch import SketchedLinear
from . import checkpoint as ckpt
from .data import IGNORE, Datasets, collate
from .metrics import MetricsLog, Progress, log_step
from .order import DataOrder, micro_batches, shard

log = logging.getLogger(__name__)

CRASH_ENV = "SKETCHTUNE_TEST_CRASH_AFTER_STEP"  # tests: hard-exit right after this step (as if killed)


# ---- set-up helpers ------------------------------------------------------------------------------------

def resolve_mixed_precision(setting: str, cuda: bool) -> str:
    """``auto``: bf16 on CUDA (the paper's setting), none on CPU (bf16 matmuls are slow there)."""
    if setting == "auto":
        return "bf16" if cuda else "no"
    if setting == "fp16" and not cuda:
        raise UserError("train.mixed_precision=fp16 needs a CUDA device; use bf16 or no on CPU")
    return setting


def make_accelerator(train, project_dir: Path):
    """A fresh Accelerator (its per-process state is reset so several runs can share one process)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # Accelerate sets up CPU multi-process (gloo, e.g. under torchrun) only when told cpu=True.
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision=resolve_mixed_precision(train.mixed_precision, cuda),
        log_with=list(train.trackers) or None,
        project_dir=str(project_dir),
    )
    check_distributed_type(accelerator.distributed_type)
    return accelerator


def check_distributed_type(kind) -> None:
    """DDP (and single process) only. FSDP would shard the LUTs together with frozen dense tensors (mixed
    requires_grad needs use_orig_params) and our checkpoints would need gathered state dicts; the base is
    already 4-bit, so DDP replicas fit where QLoRA's would."""
    name = str(getattr(kind, "value", kind)).upper()
    if name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise UserError(f"finetune supports single-process and DDP runs, not {name}; launch without --use_fsdp/--use_deepspeed")


def set_determinism(seed: int, deterministic: bool) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def trainable_luts(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Freeze everything but the sketched layers' LUTs, which become fp32 master weights; returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    luts = {}
    for name, module in model.named_modules():
        if isinstance(module, SketchedLinear):
            module.lut.data = module.lut.data.float()
            module.lut.requires_grad_(True)
            luts[f"{name}.lut"] = module.lut
    if not luts:
        raise UserError("the base model has no sketched layers; fine-tune a sketch artifact made by `sketchtune compress`")
    return luts


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute decoder blocks in backward. With a frozen base nothing entering a checkpointed block
    requires grad, and reentrant checkpointing would then drop the LUT gradients silently: make the
    embedding output require grad (and use the non-reentrant variant, which does not need it)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over response tokens (fp32)."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum")


@dataclass
class Plan:
    batch_size: int
    micro_batch_size: int
    world: int
    accumulation: int
    total_steps: int


def make_plan(train, n_examples: int, world: int) -> Plan:
    per_step = train.micro_batch_size * world
    if train.batch_size % per_step:
        raise UserError(
            f"train.batch_size={train.batch_size} must be a multiple of train.micro_batch_size x processes "
            f"= {train.micro_batch_size} x {world}"
        )
    total = train.max_steps or max(1, math.ceil(train.epochs * n_examples / train.batch_size))
    return Plan(train.batch_size, train.micro_batch_size, world, train.batch_size // per_step, total)


def make_optimizer(params: list, train, total_steps: int):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.999), eps=1e-8,
                                  foreach=False)
    name = "constant_with_warmup" if train.scheduler == "constant" else train.scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=min(train.warmup_steps, total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


# ---- the loop ------------------------------------------------------------------------------------------

class Trainer:
    """Runs optimizer steps ``start..total`` and checkpoints into ``root`` (the artifact's partial dir)."""

    def __init__(self, accelerator, model, tokenizer, data: Datasets, train, root: Path, fingerprint: str,
                 resume: bool = False, write: bool = True):
        self.acc, self.train_cfg, self.data, self.root = accelerator, train, data, Path(root)
        self.fingerprint, self.write = fingerprint, write
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        set_determinism(train.seed, train.deterministic)
        self.luts = trainable_luts(model)
        if train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        self.plan = make_plan(train, len(data.train), accelerator.num_processes)
        optimizer, scheduler = make_optimizer(list(self.luts.values()), train, self.plan.total_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = scheduler  # stepped by hand once per optimizer step
        self.order = DataOrder(len(data.train), train.seed)
        self.start_step, self.counters = 0, {"tokens": 0, "target_tokens": 0, "seconds": 0.0}
        if resume:
            self._restore()
        self.metrics = MetricsLog(self.root, self.start_step, enabled=write and accelerator.is_main_process)

    def _restore(self) -> None:
        ck = ckpt.latest_checkpoint(self.root)
        if ck is None:
            log.info("no checkpoint in %s: starting from step 0", self.root)
            return
        state = ckpt.load_checkpoint(ck, self.luts, self.optimizer, self.scheduler)
        self.start_step, self.counters = state["step"], state["counters"]
        log.info("resumed from %s (step %d of %d)", ck.name, self.start_step, self.plan.total_steps)

    # -- one optimizer step --
    def _batches(self, step: int) -> list[dict]:
        idx = shard(self.order.global_batch(step, self.plan.batch_size), self.acc.process_index, self.plan.world)
        dev = self.acc.device
        return [{k: v.to(dev) for k, v in collate([self.data.train[i] for i in mb], self.pad_id).items()}
                for mb in micro_batches(idx, self.plan.micro_batch_size)]

    def _global_counts(self, batches: list[dict]) -> torch.Tensor:
        """[response tokens, all real tokens] of the whole effective batch, summed over processes."""
        local = torch.tensor([
            sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches),
            sum(int(b["attention_mask"].sum()) for b in batches),
        ], dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(local, "sum") if self.plan.world > 1 else local

    def train_step(self, step: int) -> dict:
        batches = self._batches(step)
        counts = self._global_counts(batches)
        # DDP averages gradients over processes; scaling by world / N makes the sum the global token mean.
        scale = self.plan.world / counts[0].item()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.acc.device)
        for k, b in enumerate(batches):
            sync = k == len(batches) - 1
            with contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
                out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
                loss = token_loss_sum(out.logits, b["labels"])
                self.acc.backward(loss * scale)
            loss_sum += loss.detach().double()
        grad_norm = self.acc.clip_grad_norm_(list(self.luts.values()), self.train_cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.plan.world > 1:
            loss_sum = self.acc.reduce(loss_sum, "sum")
        return {"step": step + 1, "loss": loss_sum.item() / counts[0].item(), "lr": lr,
                "grad_norm": float(grad_norm), "tokens": int(counts[1].item()), "target_tokens": int(counts[0].item())}

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean response-token loss over the validation examples (sharded over processes)."""
        if not self.data.val:
            return None
        self.model.eval()
        idx = list(range(self.acc.process_index, len(self.data.val), self.plan.world))
        sums = torch.zeros(2, dtype=torch.float64, device=self.acc.device)
        for mb in micro_batches(idx, self.plan.micro_batch_size):
            b = {k: v.to(self.acc.device) for k, v in collate([self.data.val[i] for i in mb], self.pad_id).items()}
            out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
            sums[0] += token_loss_sum(out.logits, b["labels"]).double()
            sums[1] += (b["labels"][:, 1:] != IGNORE).sum()
        self.model.train()
        if self.plan.world > 1:
            sums = self.acc.reduce(sums, "sum")
        return (sums[0] / sums[1].clamp(min=1)).item()

    def save(self, step: int) -> None:
        if self.write and self.acc.is_main_process:
            state = {"fingerprint": self.fingerprint, "counters": self.counters, "total_steps": self.plan.total_steps}
            ckpt.save_checkpoint(self.root, step, self.luts, self.optimizer, self.scheduler, state)

    # -- the run --
    def run(self) -> dict:
        cfg, plan = self.train_cfg, self.plan
        progress = Progress(self.start_step, plan.total_steps)
        crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        log.info("training %d LUT tensors (%s params) for %d steps: batch %d = %d micro x %d accum x %d procs",
                 len(self.luts), f"{sum(p.numel() for p in self.luts.values()):,}", plan.total_steps,
                 plan.batch_size, plan.micro_batch_size, plan.accumulation, plan.world)
        for step in range(self.start_step, plan.total_steps):
            t0 = time.perf_counter()
            rec = self.train_step(step)
            dt = time.perf_counter() - t0  # the step alone: evals and checkpoints stay out of tokens/s
            self.counters["tokens"] += rec["tokens"]
            self.counters["target_tokens"] += rec["target_tokens"]
            self.counters["seconds"] += dt
            rec.update(step_time_s=dt, tokens_per_s=rec["tokens"] / max(dt, 1e-9))
            done = rec["step"]
            if cfg.eval_every and done % cfg.eval_every == 0 and done < plan.total_steps:
                rec["eval_loss"] = self.evaluate()
            self._log(rec, progress)
            if (cfg.save_every and done % cfg.save_every == 0) or done == plan.total_steps:
                self.save(done)
            if crash_after and done == crash_after:
                os._exit(99)
        final_eval = self.evaluate()
        if final_eval is not None:
            self.metrics.add({"step": plan.total_steps, "eval_loss": final_eval})
            self.acc.log({"eval_loss": final_eval}, step=plan.total_steps)
        return self.summary(final_eval)

    def _log(self, rec: dict, progress: Progress) -> None:
        self.metrics.add(rec)
        self.acc.log({k: v for k, v in rec.items() if k != "step" and v is not None}, step=rec["step"])
        if self.acc.is_main_process and (rec["step"] % self.train_cfg.log_every == 0 or rec["step"] == self.plan.total_steps):
            log_step(rec, self.plan.total_steps, progress.eta(rec["step"]))
            if rec.get("eval_loss") is not None:
                log.info("step %d  eval_loss %.4f", rec["step"], rec["eval_loss"])

    def summary(self, final_eval: float | None) -> dict:
        losses = self.metrics.train_losses()
        secs = self.counters["seconds"]
        return {
            "steps": self.plan.total_steps,
            "final_loss": losses[-1][1] if losses else None,
            "first_loss": losses[0][1] if losses else None,
            "eval_loss": final_eval,
            "trainable_params": sum(p.numel() for p in self.luts.values()),
            "tokens": self.counters["tokens"],
            "target_tokens": self.counters["target_tokens"],
            "train_seconds": round(secs, 3),
            "tokens_per_s": round(self.counters["tokens"] / secs, 1) if secs else None,
            "processes": self.plan.world,
            "accumulation": self.plan.accumulation,
            "mixed_precision": self.acc.mixed_precision,
        }

    def lut_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.luts.items()}
