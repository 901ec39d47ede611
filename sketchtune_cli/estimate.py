"""Sizes of a sketch computed from a model's config alone (meta device: no weights, no memory).

Counting follows docs/method.md §1: trainable = sum over sketched layers of rows * G * 2^bits; base bytes =
packed codes + LUTs in bf16 + every other tensor (embeddings, lm_head, norms) in bf16."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sketchtune_kernels import packed_len

from .errors import UserError
from .sketch.convert import find_target_linears
from .sketch.linear import check_sketch_shape

BF16_BYTES = 2


@dataclass
class SketchEstimate:
    model: str
    bits: int
    groups_per_row: int
    sketched_layers: int
    sketched_weights: int
    trainable_params: int
    code_bytes: int
    lut_bytes: int
    dense_bytes: int
    base_model_bytes: int
    dense_model_bytes: int
    bits_per_weight: float  # over the sketched layers: (codes + LUTs) / weights

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_sketch(model, name: str, bits: int, groups_per_row: int, targets=None, ignore=None) -> SketchEstimate:
    """Estimate for an instantiated (usually meta-device) model."""
    layers = find_target_linears(model, targets, ignore)
    trainable = code_bytes = weights = 0
    sketched_param_ids = set()
    for lname, lin in layers.items():
        try:
            check_sketch_shape(lin.in_features, bits, groups_per_row, lname)
        except ValueError as e:
            raise UserError(str(e)) from None
        rows, cols = lin.out_features, lin.in_features
        trainable += rows * groups_per_row * 2**bits
        code_bytes += rows * groups_per_row * packed_len(cols // groups_per_row, bits)
        weights += rows * cols
        sketched_param_ids.add(id(lin.weight))
    unsketched_params = all_params = 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        all_params += p.numel()
        if id(p) not in sketched_param_ids:
            unsketched_params += p.numel()
    lut_bytes = trainable * BF16_BYTES
    dense_bytes = unsketched_params * BF16_BYTES
    return SketchEstimate(
        model=name, bits=bits, groups_per_row=groups_per_row, sketched_layers=len(layers),
        sketched_weights=weights, trainable_params=trainable, code_bytes=code_bytes, lut_bytes=lut_bytes,
        dense_bytes=dense_bytes, base_model_bytes=code_bytes + lut_bytes + dense_bytes,
        dense_model_bytes=all_params * BF16_BYTES,
        bits_per_weight=(code_bytes + lut_bytes) * 8 / max(weights, 1),
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.2f} TB"


def block_working_set_bytes(config, tokens: int) -> int:
    """bf16 activations one decoder block holds for backward over ``tokens`` tokens: ~6 hidden-sized
    (norms, q/k/v/o, residual) and ~3 intermediate-sized (gate, up, their product) tensors."""
    inter = getattr(config, "intermediate_size", 4 * config.hidden_size)
    return tokens * (6 * config.hidden_size + 3 * inter) * 2


def _with_total(parts: dict) -> dict:
    """A memory estimate's components, then their sum under ``total`` (what :func:`memory_rows` shows)."""
    return parts | {"total": sum(parts.values())}


def memory_rows(title: str, parts: dict) -> list[tuple[str, str]]:
    """(what, value) table rows: a memory estimate's total under ``title``, then each component indented."""
    return [(title, human_bytes(parts["total"]))] + [(f"  {part}", human_bytes(n)) for part, n in parts.items()
                                                     if part != "total"]


def training_memory_bytes(est: SketchEstimate, config, micro_batch: int, seq_len: int, checkpointing: bool) -> dict:
    """A rough peak-memory estimate for fine-tuning (per device), by component.

    LUT gradients and AdamW's two moments are fp32; activations assume bf16 and, with gradient
    checkpointing, one saved hidden state per block plus one block's working set; the fp32 logits of the
    micro-batch are often the single largest buffer for large vocabularies (an upper bound: the trainer
    keeps logits only at the columns that predict a response token, see training.trainer.forward_targets)."""
    layers, tokens = config.num_hidden_layers, micro_batch * seq_len
    block_working = block_working_set_bytes(config, tokens)
    saved = tokens * config.hidden_size * 2 * layers if checkpointing else block_working * layers
    return _with_total({
        "base_model": est.base_model_bytes,
        "lut_grads_and_adam": est.trainable_params * 4 * 3,
        "activations": saved + (block_working if checkpointing else 0),
        "logits": tokens * config.vocab_size * 4 * 2,
    })


# Bytes per (target token, vocabulary entry) that the distillation's KL holds at its peak: the teacher's
# logits and log-softmax, the student's bf16 logits, fp32 cast and log-softmax, exp(log p), log p - log q
# and their product (autograd keeps the last three), plus the gradient flowing back: ~8 fp32-sized copies.
DISTILL_LOGIT_BYTES = 32
DISTILL_GPU_BYTES = 80 * 10**9  # the yardstick: one 80 GB GPU (A100/H100 80GB)


def distill_memory_bytes(est: SketchEstimate, config, micro_batch: int, seq_len: int, checkpointing: bool,
                         teacher: str = "online") -> dict:
    """Peak memory of compress's LUT distillation on one device while the LUTs train, by component: the
    dense teacher (bf16; none with ``teacher="topk"``, whose targets wait on the CPU) and the student sketch
    (codes, fp32 LUTs, bf16 dense tensors) side by side, the LUTs' gradients and AdamW moments, the student's
    activations (as :func:`training_memory_bytes`; the teacher's forward keeps one block's working set) and
    the KL's logits at every calibration position."""
    train = training_memory_bytes(est, config, micro_batch, seq_len, checkpointing)
    online = teacher == "online"
    return _with_total({
        "teacher": est.dense_model_bytes if online else 0,
        "student": est.code_bytes + est.trainable_params * 4 + est.dense_bytes,
        "lut_grads_and_adam": train["lut_grads_and_adam"],
        "activations": train["activations"] + (block_working_set_bytes(config, micro_batch * seq_len) if online else 0),
        "logits": micro_batch * seq_len * config.vocab_size * DISTILL_LOGIT_BYTES,
    })


def teacher_pass_bytes(est: SketchEstimate, config, micro_batch: int, seq_len: int) -> dict:
    """Peak memory of the ``topk`` teacher's one pass (before the student trains, alone on the device): the
    teacher, one block's working set, and its fp32 logits with their log-softmax and top-k work (~3 copies)."""
    return _with_total({"teacher": est.dense_model_bytes,
                        "activations": block_working_set_bytes(config, micro_batch * seq_len),
                        "logits": micro_batch * seq_len * config.vocab_size * 4 * 3})


def distill_memory_plan(est: SketchEstimate, config, micro_batch: int, seq_len: int, checkpointing: bool,
                        teacher: str = "online", device_bytes: int = DISTILL_GPU_BYTES) -> dict:
    """The distillation's memory at the configured settings and whether it fits ``device_bytes``; when it
    does not, the lower-memory settings that do, each with its peak: the largest micro-batch that fits without
    gradient checkpointing (no recompute), then with it, then the same with the ``topk`` teacher (not an exact
    KL, so offered last); ``fits_with`` is empty when nothing fits (a student alone beyond the device)."""
    def peak(mb, ckpt, mode) -> int:
        phases = [distill_memory_bytes(est, config, mb, seq_len, ckpt, mode)["total"]]
        if mode == "topk":
            phases.append(teacher_pass_bytes(est, config, mb, seq_len)["total"])
        return max(phases)

    now = distill_memory_bytes(est, config, micro_batch, seq_len, checkpointing, teacher)
    out = {"device_bytes": device_bytes, "teacher": teacher, "configured": now,
           "fits": peak(micro_batch, checkpointing, teacher) <= device_bytes, "fits_with": []}
    if teacher == "topk":
        out["teacher_pass"] = teacher_pass_bytes(est, config, micro_batch, seq_len)
    if out["fits"]:
        return out
    for mode in dict.fromkeys([teacher, "topk"]):
        for ckpt in sorted({checkpointing, True}):
            mb = micro_batch
            while mb >= 1:
                total = peak(mb, ckpt, mode)
                if total <= device_bytes and (ckpt, mb, mode) != (checkpointing, micro_batch, teacher):
                    out["fits_with"].append({"compress.distill_teacher": mode,
                                             "compress.distill_gradient_checkpointing": ckpt,
                                             "compress.distill_micro_batch_size": mb, "total": total})
                    break
                mb //= 2
        if out["fits_with"]:
            break
    return out


def distill_plan_rows(plan: dict) -> list[tuple[str, str]]:
    """(what, value) rows for a table: the distillation's peak, whether it fits, and what would."""
    rows = memory_rows("distill memory per device (predicted)", plan["configured"])
    if "teacher_pass" in plan:  # distill_teacher=topk: the teacher's pass runs first, alone
        rows += memory_rows("  top-k teacher pass, before training", plan["teacher_pass"])
    verdict = "yes" if plan["fits"] else "NO"
    rows.append((f"distill fits {human_bytes(plan['device_bytes'])}", verdict))
    for option in plan["fits_with"]:
        keys = ", ".join(f"{k}={v}" for k, v in option.items() if k != "total")
        rows.append((f"  fits with {keys}", human_bytes(option["total"])))
    if not plan["fits"] and not plan["fits_with"]:
        rows.append(("  fits with", "nothing: the student alone, or the teacher's pass, exceeds the device"))
    return rows


def compress_time_estimates(config, settings) -> dict:
    """Predicted compress seconds (per phase and ``total``) for a model ``config`` and ``compress`` settings,
    from compress.cost_model, on this machine (probed) and each named GPU of compress.device_rates (spec sheets
    x assumed efficiencies): what `run --dry-run` and `inspect --estimate` show. ``{}`` for a model whose
    blocks are not Llama-style (no intermediate_size / attention head counts to count from)."""
    from .compress.cost_model import predict_compress
    from .compress.device_rates import GPUS, named_rates

    if not all(hasattr(config, a) for a in ("hidden_size", "intermediate_size", "num_attention_heads",
                                             "num_hidden_layers")):
        return {}
    out = {}
    for name in ("this", *GPUS):
        rates = named_rates(name)
        out[name] = {"device": rates.name, "source": rates.source,
                     "seconds": {k: round(v, 1) for k, v in predict_compress(config, settings, rates).items()}}
    return out


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
