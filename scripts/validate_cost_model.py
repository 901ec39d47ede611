"""Checks the compress cost model (sketchtune_cli/compress/cost_model.py) against measured phase times on this
machine: the probe measures the device's primitive rates, then real-shaped layers are sketched with the
product's ``sketch_layer`` under the phase timers, and one decoder block per shape is fed its calibration
tokens (forward + Hessians), and each phase's prediction is set beside its measurement.

    python scripts/validate_cost_model.py                      # all shapes (~5 min on 2 cores)
    python scripts/validate_cost_model.py --quick              # the small shapes only

Layers carry synthetic weights (Gaussian rows) and a synthetic positive definite H (low-rank + diagonal with
spread column scales): phase times depend on shapes, not values, except the k-means iterations, which the
table shows both assumed (what ``run --dry-run`` predicts with) and as the run used. Large layers are row
slices (every phase but ``prepare`` is linear in the rows; ``prepare`` does not depend on them): say which.
Writes ``--out`` (JSON) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from sketchtune_cli.compress import timing  # noqa: E402
from sketchtune_cli.compress.cost_model import (  # noqa: E402
    ASSUMED_KMEANS_ITERATIONS, LAYER_PHASES, block_work, layer_work)
from sketchtune_cli.compress.device_rates import measure_rates  # noqa: E402
from sketchtune_cli.compress.hessian import HessianAccumulator  # noqa: E402
from sketchtune_cli.compress.settings import CompressSettings  # noqa: E402
from sketchtune_cli.compress.sketcher import sketch_layer  # noqa: E402

# (label, rows, cols, groups): the embedded model's three layer shapes, a Llama-3-8B q_proj (whole) and
# down_proj (a row slice of its 4096 x 14336)
LAYERS = [
    ("smollm2 q/o_proj", 576, 576, 1),
    ("smollm2 q/o_proj", 576, 576, 4),
    ("smollm2 gate/up_proj", 1536, 576, 4),
    ("smollm2 down_proj", 576, 1536, 4),
    ("llama-3-8b q_proj", 4096, 4096, 4),
    ("llama-3-8b down_proj, 512 of 4096 rows", 512, 14336, 4),
]
QUICK = 4
# (label, hidden, intermediate, heads, kv_heads, sequences, seq_len)
BLOCKS = [
    ("smollm2 block, 128 x 512 tokens", 576, 1536, 9, 3, 128, 512),
    ("1024/2816 block, 32 x 512 tokens", 1024, 2816, 16, 8, 32, 512),
]


def synthetic_hessian(cols: int, gen: torch.Generator) -> torch.Tensor:
    rank = min(cols, 256)
    scale = torch.exp(torch.randn(cols, generator=gen))  # column scales spread like activations
    B = torch.randn(cols, rank, generator=gen) * scale[:, None]
    H = B @ B.T / rank
    H.diagonal().add_(0.1 * scale ** 2)
    return H


def measure_layer(rows: int, cols: int, s: CompressSettings) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(rows, cols, generator=gen) * 0.02
    H = synthetic_hessian(cols, gen)
    with timing.collect() as t:
        _, stats = sketch_layer(W, H, s)
    return t.seconds, {"kmeans_iterations": stats.kmeans_iterations, "refit_rounds": stats.refit_rounds}


def measure_block(hidden, inter, heads, kv_heads, sequences, seq_len) -> dict:
    """One fp32 Llama block over the tokens, one sequence per call as the pipeline feeds them, and the four
    Hessians of its linears' inputs."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=seq_len)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, 0).eval()
    rotary = LlamaRotaryEmbedding(config)
    x = torch.randn(1, seq_len, hidden)
    pos = torch.arange(seq_len)[None]
    emb = rotary(x, pos)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=name: inputs.__setitem__(name, a[0]))
             for name, m in (("q", layer.self_attn.q_proj), ("o", layer.self_attn.o_proj),
                             ("gate", layer.mlp.gate_proj), ("down", layer.mlp.down_proj))]
    acc = {"q": HessianAccumulator(hidden), "o": HessianAccumulator(hidden), "gate": HessianAccumulator(hidden),
           "down": HessianAccumulator(inter)}
    forward = hessian = 0.0
    with torch.no_grad():
        for _ in range(sequences):
            t0 = time.perf_counter()
            layer(x, position_embeddings=emb, position_ids=pos)
            t1 = time.perf_counter()
            for name, a in acc.items():
                a.add(inputs[name])
            forward += t1 - t0
            hessian += time.perf_counter() - t1
    for h in hooks:
        h.remove()
    return {"forward": forward, "hessian": hessian}


def ratio(pred: float, meas: float) -> float:
    return pred / meas if meas > 0 else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the embedded model's shapes only")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "cost_model.json"))
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    rates = measure_rates("cpu")
    print(f"probe ({rates.name}): " + ", ".join(f"{k} {v:.3g}" for k, v in rates.to_dict().items()
                                               if isinstance(v, float)), flush=True)
    results = {"rates": rates.to_dict(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "layers": [], "blocks": []}
    for label, rows, cols, groups in LAYERS[:QUICK] if a.quick else LAYERS:
        s = CompressSettings(groups_per_row=groups)
        t0 = time.perf_counter()
        measured, used = measure_layer(rows, cols, s)
        assumed = {ph: w.seconds(rates) for ph, w in layer_work(rows, cols, s).items()}
        post = {ph: w.seconds(rates) for ph, w in layer_work(rows, cols, s, used["refit_rounds"],
                                                              used["kmeans_iterations"]).items()}
        row = {"label": label, "rows": rows, "cols": cols, "groups": groups, "used": used,
               "measured": {ph: measured.get(ph, 0.0) for ph in LAYER_PHASES}, "predicted": assumed,
               "predicted_with_used_iterations": post, "wall_s": time.perf_counter() - t0}
        row["measured"]["total"] = sum(row["measured"].values())
        assumed["total"], post["total"] = sum(assumed.values()), sum(post.values())
        results["layers"].append(row)
        print(f"{label} G={groups}: measured {row['measured']['total']:.2f} s, predicted {assumed['total']:.2f} s "
              f"({ratio(assumed['total'], row['measured']['total']):.2f}x)  "
              + "  ".join(f"{ph} {ratio(assumed[ph], row['measured'][ph]):.2f}" for ph in LAYER_PHASES), flush=True)
    for label, hidden, inter, heads, kv, seqs, seq_len in BLOCKS[:1] if a.quick else BLOCKS:
        measured = measure_block(hidden, inter, heads, kv, seqs, seq_len)
        predicted = {ph: w.seconds(rates) for ph, w in block_work(hidden, inter, heads, kv, seqs * seq_len,
                                                                  seq_len).items()}
        results["blocks"].append({"label": label, "measured": measured, "predicted": predicted})
        print(f"{label}: " + "  ".join(f"{ph} measured {measured[ph]:.2f} s predicted {predicted[ph]:.2f} s "
                                       f"({ratio(predicted[ph], measured[ph]):.2f}x)" for ph in measured), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = [f"k-means iterations assumed: {ASSUMED_KMEANS_ITERATIONS}", "",
             "| layer | G | phase | measured s | predicted s | predicted / measured | with the run's k-means iterations |",
             "|---|---|---|---|---|---|---|"]
    for r in results["layers"]:
        for ph in (*LAYER_PHASES, "total"):
            m, pr, po = r["measured"][ph], r["predicted"][ph], r["predicted_with_used_iterations"][ph]
            lines.append(f"| {r['label']} ({r['rows']} x {r['cols']}) | {r['groups']} | {ph} | {m:.3f} | {pr:.3f} | "
                         f"{ratio(pr, m):.2f} | {ratio(po, m):.2f} |")
    lines += ["", "| block | phase | measured s | predicted s | predicted / measured |", "|---|---|---|---|---|"]
    for b in results["blocks"]:
        for ph, m in b["measured"].items():
            lines.append(f"| {b['label']} | {ph} | {m:.2f} | {b['predicted'][ph]:.2f} | {ratio(b['predicted'][ph], m):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
