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
    seen, unsketched_params, all_params = set(), 0, 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        if id(p) in seen:
            continue
        seen.add(id(p))
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


def estimate_for_spec(spec: str, bits: int, groups_per_row: int, targets=None, ignore=None) -> SketchEstimate:
    from .models import load_model_config, meta_model

    return estimate_sketch(meta_model(load_model_config(spec)), spec, bits, groups_per_row, targets, ignore)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.2f} TB"


def training_memory_bytes(est: SketchEstimate, config, micro_batch: int, seq_len: int, checkpointing: bool) -> dict:
    """A rough peak-memory estimate for fine-tuning (per device), by component.

    LUT gradients and AdamW's two moments are fp32; activations assume bf16 and, with gradient
    checkpointing, one saved hidden state per block plus one block's working set; the fp32 logits of the
    micro-batch are often the single largest buffer for large vocabularies."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * hidden)
    tokens = micro_batch * seq_len
    block_working = tokens * (6 * hidden + 3 * inter) * 2
    saved = tokens * hidden * 2 * layers if checkpointing else block_working * layers
    parts = {
        "base_model": est.base_model_bytes,
        "lut_grads_and_adam": est.trainable_params * 4 * 3,
        "activations": saved + (block_working if checkpointing else 0),
        "logits": tokens * config.vocab_size * 4 * 2,
    }
    parts["total"] = sum(parts.values())
    return parts


# Devices `run --dry-run` and `inspect --estimate` predict compress time for: this machine (probed) and the
# named GPUs of compress.device_rates (spec sheets x assumed efficiencies).
TIME_DEVICES = ("this", "a100", "h100", "h200")


def compress_time_estimates(config, settings, devices=TIME_DEVICES) -> dict:
    """Predicted compress seconds (per phase and ``total``) per device for a model ``config`` and
    ``compress`` settings, from compress.cost_model; ``{}`` for a model whose blocks are not Llama-style
    (no intermediate_size / attention head counts to count from)."""
    from .compress.cost_model import predict_compress
    from .compress.device_rates import named_rates

    if not all(hasattr(config, a) for a in ("hidden_size", "intermediate_size", "num_attention_heads",
                                             "num_hidden_layers")):
        return {}
    out = {}
    for name in devices:
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
