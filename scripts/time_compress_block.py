"""Times `sketchtune compress` on real-shaped synthetic decoder blocks (default: Llama-3-8B's, 4096 hidden,
14336 intermediate, 32 heads / 8 KV heads) through the product's own pipeline (``compress_model``):
calibration capture, Hessians per true-sequential group, k-means + GPTQ codes + LUT refit for each of
the 7 linears, and the block's recomputed outputs. Random weights and token ids: the time is real, the
sketch quality is meaningless. The whole-model estimate multiplies the per-block time by the layer count.

    python scripts/time_compress_block.py                      # on a GPU: the real shape, 128 x 2048 tokens
    python scripts/time_compress_block.py --hidden 256 --intermediate 512 --heads 4 --kv-heads 2 \\
        --samples 4 --seq-len 64 --device cpu                  # a smoke run anywhere

Prints a per-layer table and writes JSON (``--out``, default benchmarks/compress_block.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from sketchtune_cli.compress import timing  # noqa: E402
from sketchtune_cli.compress.cost_model import block_seconds  # noqa: E402
from sketchtune_cli.compress.device_rates import GPUS, measure_rates  # noqa: E402
from sketchtune_cli.compress.pipeline import compress_model, resolve_device  # noqa: E402
from sketchtune_cli.compress.settings import CompressSettings  # noqa: E402
from sketchtune_cli.config import parse_override  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_cells import write_json_report  # noqa: E402
from synthetic_llama import add_shape_args, synthetic_llama  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(p, blocks=1)
    p.add_argument("--model-layers", type=int, default=32, help="layers of the model the estimate is for (Llama-3-8B: 32)")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--groups-per-row", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the dense block")
    p.add_argument("--offload-activations", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="other compress settings, e.g. --set lut_refit_rounds=0 (repeatable)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "compress_block.json"))
    return p.parse_args(argv)


def settings_from(a) -> CompressSettings:
    extra = {}
    for item in a.set:
        path, value = parse_override(item)
        extra[path[-1]] = value
    return CompressSettings(bits=a.bits, groups_per_row=a.groups_per_row, num_samples=a.samples, seq_len=a.seq_len,
                            offload_activations=a.offload_activations, **extra)


def main(argv=None) -> int:
    a = parse_args(argv)
    device = resolve_device(a.device)
    settings = settings_from(a)
    model = synthetic_llama(a, vocab=1024, max_positions=a.seq_len, dtype=getattr(torch, a.dtype)).eval()
    ids = torch.randint(0, model.config.vocab_size, (a.samples, a.seq_len), generator=torch.Generator().manual_seed(0))
    layers: list[dict] = []
    cuda = device.type == "cuda"

    def on_layer(index, total, name, stats):
        layers.append({"block": index, "layer": name.split(".", 3)[-1], "sketch_s": stats.get("seconds"),
                       "rel_error": stats.get("rel_error")})
        print(f"block {index + 1}/{total} {layers[-1]['layer']}: sketch {stats.get('seconds', 0):.1f}s", file=sys.stderr, flush=True)

    rates = measure_rates(device.type)  # the cost model's probe, on this device (compress/device_rates.py)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with timing.collect(sync=cuda) as phases:
        compress_model(model, ids, settings, device, on_layer=on_layer)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    predicted = predicted_phases(a, settings, rates)
    table_rates = next((r for key, r in GPUS.items() if cuda and key in report_name(device).lower()), None)
    from_table = predicted_phases(a, settings, table_rates) if table_rates else {}
    per_block = seconds / a.blocks
    report = {
        "device": report_name(device),
        "torch": torch.__version__,
        "shape": {"hidden": a.hidden, "intermediate": a.intermediate, "heads": a.heads, "kv_heads": a.kv_heads},
        "calibration": {"samples": a.samples, "seq_len": a.seq_len},
        "settings": settings.model_dump(include={"bits", "groups_per_row", "lut_refit_rounds", "refit_shrinkage",
                                                  "exponent", "act_order", "block_size", "kmeans_iters"}),
        "blocks": a.blocks, "seconds": seconds, "seconds_per_block": per_block,
        f"est_{a.model_layers}_layers_s": per_block * a.model_layers,
        "peak_device_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "layers": layers,
        "phases_measured_s": phases.seconds,
        "phases_predicted_s": predicted, "probe_rates": rates.to_dict(),
        "phases_predicted_from_spec_sheet_s": from_table,
    }
    print("\n| phase | measured s | predicted (probe) s | predicted (spec sheet) s |\n|---|---:|---:|---:|", file=sys.stderr)
    for phase, p in predicted.items():
        m = phases.seconds.get(phase, 0.0)
        sheet = f"{from_table[phase]:.1f}" if from_table else "-"
        print(f"| {phase} | {m:.1f} | {p:.1f} | {sheet} |", file=sys.stderr)
    print("\n| layer | sketch s | rel. error |\n|---|---:|---:|", file=sys.stderr)
    for row in layers:
        print(f"| {row['block']}.{row['layer']} | {row['sketch_s']:.1f} | {row['rel_error']:.4g} |", file=sys.stderr)
    print(f"\n{a.blocks} block(s) in {seconds:.1f}s on {report['device']}; est. {a.model_layers} layers: "
          f"{per_block * a.model_layers / 60:.1f} min" + (f"; peak memory {report['peak_device_memory_gib']:.1f} GiB"
                                                          if cuda else ""), file=sys.stderr)
    write_json_report(a.out, report)
    return 0


def report_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def predicted_phases(a, settings, rates) -> dict:
    """The cost model's seconds per phase for the timed blocks (compress/cost_model.py)."""
    per_block = block_seconds(a.hidden, a.intermediate, a.heads, a.kv_heads, settings, rates,
                              forward_bytes=2 if a.dtype == "bfloat16" else 4)
    return {p: v * a.blocks for p, v in per_block.items()}


if __name__ == "__main__":
    sys.exit(main())
