"""The LUT training loop on Accelerate, for the finetune stage and compress's distillation: only the LUTs
train (docs/method.md §3).

Why the loop is hand-written rather than a dataloader + ``accelerator.accumulate``: exact resume and
process-count-independent results need full control of which examples form each step (see
:mod:`.order`) and of the loss normalisation. The loss of an optimizer step is the mean over all response
tokens of the whole effective batch (all micro batches, all processes), so 1 process with 4 micro batches
and 2 processes with 2 each compute the same gradient.

Several processes: DDP (``accelerate launch --num_processes N``) or FSDP2 (``accelerate launch --use_fsdp
--fsdp_version 2 --num_processes N``). Under FSDP the trainer applies ``fully_shard`` itself (one unit per
decoder block plus the root, see :func:`shard_model`) instead of handing the model to ``accelerator.prepare``:
Accelerate's own FSDP path exists only on GPUs, and doing it here gives CPU (gloo) and GPU one code path.
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

from .. import preemption
from ..errors import UserError
from ..sketch import sketched_layers
from . import checkpoint as ckpt
from .batches import IGNORE, Datasets, collate
from .metrics import MetricsLog, Progress, log_step
from .order import DataOrder, micro_batches, shard

log = logging.getLogger(__name__)


# ---- set-up helpers ------------------------------------------------------------------------------------

def resolve_mixed_precision(setting: str, cuda: bool) -> str:
    """``auto``: bf16 on CUDA (the paper's setting), none on CPU (bf16 matmuls are slow there)."""
    if setting == "auto":
        return "bf16" if cuda else "no"
    if setting == "fp16" and not cuda:
        raise UserError("train.mixed_precision=fp16 needs a CUDA device; use bf16 or no on CPU")
    return setting


def make_accelerator(train, project_dir: Path, trackers: list | None = None, cpu: bool | None = None):
    """A fresh Accelerator (its per-process state is reset so several runs can share one process).
    ``trackers``: accelerate tracker objects (see :mod:`sketchtune_cli.tracking`); default train.trackers.
    ``cpu``: force the CPU (default: the CPU only when there is no CUDA device)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Private, but the only way: Accelerator() reuses the process-wide AcceleratorState of an earlier run
    # (mixed precision, plugins) and refuses different settings; tests and `sketchtune run` train several
    # times in one process. reset_partial_state=False keeps processes.state()'s process group joined.
    AcceleratorState._reset_state(reset_partial_state=False)
    check_fsdp_version()  # before Accelerator(): its FSDP1 plugin fails on a CPU-only machine with a cryptic error
    # Accelerate sets up CPU multi-process (gloo, e.g. under torchrun) only when told cpu=True.
    cuda = torch.cuda.is_available() and not cpu
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision=resolve_mixed_precision(train.mixed_precision, cuda),
        log_with=(trackers if trackers is not None else list(train.trackers)) or None,
        project_dir=str(project_dir),
    )
    check_distributed_type(accelerator.distributed_type)
    if uses_fsdp(accelerator) and accelerator.mixed_precision == "fp16":
        raise UserError("train.mixed_precision=fp16 is not supported with FSDP (no sharded grad scaler); use bf16")
    return accelerator


FSDP_ENV = "ACCELERATE_USE_FSDP"  # set by `accelerate launch --use_fsdp` (or an FSDP accelerate config)
IGNORED_FSDP_ENV = ("FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING")  # accelerate options we do not apply


def check_distributed_type(kind) -> None:
    """Single process, DDP and FSDP2; DeepSpeed and Megatron-LM are refused."""
    name = str(getattr(kind, "value", kind)).upper()
    if name in ("DEEPSPEED", "MEGATRON_LM"):
        raise UserError(f"finetune supports single-process, DDP and FSDP runs, not {name}; launch without --use_deepspeed")


def fsdp_requested() -> bool:
    return os.environ.get(FSDP_ENV, "false").lower() in ("true", "1")


def check_fsdp_version() -> None:
    """FSDP2 only. FSDP1's flat parameters would need use_orig_params for LUTs next to frozen tensors; FSDP2
    shards per parameter (the LUTs and the frozen dense tensors) and leaves the packed codes as plain buffers."""
    if fsdp_requested() and os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("finetune shards with FSDP2 only: launch with `accelerate launch --use_fsdp --fsdp_version 2 ...`")


def uses_fsdp(accelerator) -> bool:
    """True for an FSDP launch with several processes. Accelerate turns ``--use_fsdp`` into
    DistributedType.FSDP on GPUs only (on CPU it stays MULTI_CPU), so the launcher's environment decides."""
    name = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)).upper()
    if not (name == "FSDP" or fsdp_requested()) or accelerator.num_processes < 2:
        return False
    check_fsdp_version()
    return True


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
    for name, module in sketched_layers(model).items():
        module.lut.data = module.lut.data.float()
        module.lut.requires_grad_(True)
        luts[f"{name}.lut"] = module.lut
    if not luts:
        raise UserError("the base model has no sketched layers; fine-tune a sketch artifact made by `sketchtune compress`")
    return luts


def shard_model(model: torch.nn.Module, device: torch.device, world: int) -> int:
    """FSDP2: ``fully_shard`` every decoder block (``model._no_split_modules``), then the root (embeddings,
    final norm, head). Parameters (the LUTs, and the frozen dense tensors) are sharded along dim 0; buffers
    (packed codes, biases) are not sharded and stay on every process. Returns the number of blocks sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # FSDP2 all-gathers the LUT into a persistent unsharded buffer under _unsafe_preserve_version_counter:
    # new values arrive without a version bump, so the CPU W_hat cache (keyed on version and pointer) could
    # serve stale weights in eval. The flat-index cache stays: it is keyed on the codes, which FSDP never touches.
    for m in sketched_layers(model).values():
        m.cache_dense_on_cpu = False
    return len(blocks)


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


def aligned_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of ``logits [B, K, V]`` against ``targets [B, K]`` (IGNORE carries no loss), fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


def target_columns(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose logits predict a response token in some row of the batch (position p predicts
    token p + 1). Only these positions get logits: the LM head and its [B, T, vocab] output would otherwise
    be paid for every prompt token (~20% of a 135M model's FLOPs; on Llama-3's 128k vocabulary, gigabytes)."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(1)


def forward_targets(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Run ``model`` on ``batch`` keeping logits only at its target columns: (logits [B, K, V], the batch plus
    ``columns`` [K] and ``targets`` [B, K], the labels those logits predict)."""
    cols = target_columns(batch["labels"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                logits_to_keep=cols)
    return out.logits, {**batch, "columns": cols, "targets": batch["labels"][:, cols + 1]}


@dataclass
class Plan:
    world: int
    accumulation: int
    total_steps: int


def batch_problems(train, world: int) -> list[str]:
    if train.batch_size % (train.micro_batch_size * world):
        return [f"train.batch_size={train.batch_size} must be a multiple of train.micro_batch_size x processes "
                f"= {train.micro_batch_size} x {world}"]
    return []


def optimizer_steps(train, n_examples: int | None) -> int:
    """Optimizer steps of a run over ``n_examples`` (the last, partial batch counts): the trainer's plan and
    `sketchtune run --dry-run` both ask here."""
    return train.max_steps or max(1, math.ceil(train.epochs * n_examples / train.batch_size))


def make_plan(train, n_examples: int, world: int) -> Plan:
    for problem in batch_problems(train, world):
        raise UserError(problem)
    total = optimizer_steps(train, n_examples)
    return Plan(world, train.batch_size // (train.micro_batch_size * world), total)


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
                 resume: bool = False, write: bool = True, loss_fn=None, stage: str = "finetune"):
        """``loss_fn(logits, batch)``: the summed loss over the batch's target tokens, given the logits at the
        batch's target columns and the batch with ``columns`` and ``targets`` (see :func:`forward_targets`);
        default the next-token cross entropy. ``stage``: the name progress hooks
        and stop messages use."""
        self.acc, self.train_cfg, self.data, self.root = accelerator, train, data, Path(root)
        self.fingerprint, self.write, self.stage = fingerprint, write, stage
        self.loss_fn = loss_fn or (lambda logits, batch: aligned_loss_sum(logits, batch["targets"]))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        set_determinism(train.seed, train.deterministic)
        self.luts = trainable_luts(model)
        if train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        self.plan = make_plan(train, len(data.train), accelerator.num_processes)
        self.fsdp = uses_fsdp(accelerator)
        if self.fsdp:
            blocks = shard_model(model, accelerator.device, accelerator.num_processes)
            log.info("FSDP2: %d decoder blocks + root sharded over %d processes (codes stay buffers)", blocks,
                     accelerator.num_processes)
            ignored = [k for k in IGNORED_FSDP_ENV if os.environ.get(k, "false").lower() == "true"]
            if ignored:
                log.warning("ignoring %s: finetune applies its own FSDP2 wrapping (use train.gradient_checkpointing "
                            "for activation checkpointing)", ", ".join(ignored))
            # fully_shard replaced the LUT Parameters by sharded DTensor ones: collect those (same names, order)
            params = dict(model.named_parameters())
            self.luts = {name: params[name] for name in self.luts}
        optimizer, scheduler = make_optimizer(list(self.luts.values()), train, self.plan.total_steps)
        if self.fsdp:
            # Not through accelerator.prepare: that would wrap the sharded model in DDP on CPU. The forward
            # gets the accelerator's autocast explicitly (see _autocast); fp16 (grad scaler) is refused.
            self.model, self.optimizer = model, optimizer
        else:
            self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = scheduler  # stepped by hand once per optimizer step
        self.order = DataOrder(len(data.train), train.seed)
        self.start_step, self.counters = 0, {"tokens": 0, "target_tokens": 0, "seconds": 0.0}
        if resume:
            self._restore()
        self.metrics = MetricsLog(self.root, self.start_step, enabled=write and accelerator.is_main_process)

    def _restore(self) -> None:
        loaded = ckpt.load_latest(self.root, self.luts, self.optimizer, self.scheduler)
        if loaded is None:
            log.info("no checkpoint in %s: starting from step 0", self.root)
            return
        ck, state = loaded
        self.start_step, self.counters = state["step"], state["counters"]
        log.info("resumed from %s (step %d of %d)", ck.name, self.start_step, self.plan.total_steps)

    # -- one optimizer step --
    def _batches(self, step: int) -> list[dict]:
        idx = shard(self.order.global_batch(step, self.train_cfg.batch_size), self.acc.process_index, self.plan.world)
        dev = self.acc.device
        return [{k: v.to(dev) for k, v in collate([self.data.train[i] for i in mb], self.pad_id).items()}
                for mb in micro_batches(idx, self.train_cfg.micro_batch_size)]

    def _global_counts(self, batches: list[dict]) -> torch.Tensor:
        """[response tokens, all real tokens] of the whole effective batch, summed over processes."""
        local = torch.tensor([
            sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches),
            sum(int(b["attention_mask"].sum()) for b in batches),
        ], dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(local, "sum") if self.plan.world > 1 else local

    def _no_sync(self):
        """Accumulate gradients locally (no all-reduce / reduce-scatter) for all but the last micro batch."""
        return _fsdp_no_sync(self.model) if self.fsdp else self.acc.no_sync(self.model)

    def _autocast(self):
        # DDP: accelerator.prepare already wrapped the model's forward in the mixed-precision autocast.
        return self.acc.autocast() if self.fsdp else contextlib.nullcontext()

    def train_step(self, step: int) -> dict:
        batches = self._batches(step)
        counts = self._global_counts(batches)
        # DDP and FSDP both average gradients over processes; scaling by world / N makes the sum the global
        # token mean.
        scale = self.plan.world / counts[0].item()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.acc.device)
        for k, b in enumerate(batches):
            sync = k == len(batches) - 1
            with contextlib.nullcontext() if sync else self._no_sync():
                with self._autocast():
                    logits, b = forward_targets(self.model, b)
                loss = self.loss_fn(logits, b)
                self.acc.backward(loss * scale)
            loss_sum += loss.detach().double()
        # DTensor-aware under FSDP: the norm covers all shards and is the same on every process.
        grad_norm = ckpt.full_tensor(self.acc.clip_grad_norm_(list(self.luts.values()), self.train_cfg.max_grad_norm))
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
        batches = micro_batches(idx, self.train_cfg.micro_batch_size)
        # Every rank runs the same number of forwards: under FSDP each forward gathers parameters and under
        # DDP it broadcasts buffers, collectives a rank with one micro-batch fewer would never join (a
        # hang). The padding forward re-reads example 0 and is not counted.
        most = -(-len(range(0, len(self.data.val), self.plan.world)) // self.train_cfg.micro_batch_size)
        padding = [None] * (most - len(batches)) if self.plan.world > 1 else []
        sums = torch.zeros(2, dtype=torch.float64, device=self.acc.device)
        for mb in batches + padding:
            b = {k: v.to(self.acc.device) for k, v in collate([self.data.val[i] for i in mb or [0]], self.pad_id).items()}
            with self._autocast():
                logits, b = forward_targets(self.model, b)
            if mb is not None:
                sums[0] += self.loss_fn(logits, b).double()
                sums[1] += (b["labels"][:, 1:] != IGNORE).sum()
        self.model.train()
        if self.plan.world > 1:
            sums = self.acc.reduce(sums, "sum")
        return (sums[0] / sums[1].clamp(min=1)).item()

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (written by the main process). Under FSDP every process takes part: the sharded
        LUTs and optimizer states are gathered into full tensors first, so the files are the same as from a
        single process (and resume under any process count / DDP / FSDP)."""
        writes = self.write and self.acc.is_main_process
        if not (writes or self.fsdp):
            return
        luts, opt_state = self.lut_tensors(), ckpt.full_optimizer_state(self.optimizer)
        if writes:
            state = {"fingerprint": self.fingerprint, "counters": self.counters, "total_steps": self.plan.total_steps}
            ckpt.save_checkpoint(self.root, step, luts, opt_state, self.scheduler, state)

    # -- the run --
    def run(self) -> dict:
        cfg, plan = self.train_cfg, self.plan
        progress = Progress(self.start_step, plan.total_steps)
        last_save = time.monotonic()
        log.info("training %d LUT tensors (%s params) for %d steps: batch %d = %d micro x %d accum x %d procs",
                 len(self.luts), f"{sum(p.numel() for p in self.luts.values()):,}", plan.total_steps,
                 cfg.batch_size, cfg.micro_batch_size, plan.accumulation, plan.world)
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
            preemption.notify_progress(self.stage, done)
            stop, due = self._stop_or_due(last_save)
            if (cfg.save_every and done % cfg.save_every == 0) or done == plan.total_steps or stop or due:
                self.save(done)
                last_save = time.monotonic()
            if stop and done < plan.total_steps:
                raise preemption.Interrupted(
                    f"{preemption.current().name}: stopped after step {done} of {plan.total_steps}, checkpoint in "
                    f"{self.root}; run the same command with --resume to continue")
        final_eval = self.evaluate()
        if final_eval is not None:
            self.metrics.add({"step": plan.total_steps, "eval_loss": final_eval})
            self.acc.log({"eval_loss": final_eval}, step=plan.total_steps)
        return self.summary(final_eval)

    def _stop_or_due(self, last_save: float) -> tuple[bool, bool]:
        """(stop requested by SIGTERM/SIGUSR1, train.save_every_minutes elapsed), agreed by all processes in
        one all-reduce, so every rank checkpoints and stops after the same step (clocks and signals differ)."""
        minutes = self.train_cfg.save_every_minutes
        due = bool(minutes) and time.monotonic() - last_save >= minutes * 60
        return tuple(preemption.current().agreed(due, device=self.acc.device))

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
        """The full trained LUTs on CPU. Under FSDP this gathers the shards: call it on every process."""
        return {k: ckpt.full_tensor(v.detach()).cpu().contiguous() for k, v in self.luts.items()}


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
