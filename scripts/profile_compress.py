"""Where compress spends its time (issue 21): the first decoder blocks of the embedded SmolLM2-135M through the
product's own pipeline (``compress_model``) with the phase markers of ``sketchtune_cli.compress.timing`` on,
at each ``--groups`` setting.

    python scripts/profile_compress.py                         # G=1 and G=4, 2 blocks, 16 x 256 builtin tokens
    python scripts/profile_compress.py --blocks 1 --set refit_tolerance=0

Prints a per-phase table (seconds, share of the compress wall time) and per-layer refit rounds and objective
trajectories; ``--out`` writes the JSON (default benchmarks/compress_profile.json). Wall-clock numbers:
on a shared machine they move with the load, so compare phases within one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sketchtune_cli.compress import timing  # noqa: E402
from sketchtune_cli.compress.calibration import load_calibration  # noqa: E402
from sketchtune_cli.compress.cost_model import hessian_flops, layer_flops  # noqa: E402
from sketchtune_cli.compress.pipeline import compress_model  # noqa: E402
from sketchtune_cli.compress.settings import CompressSettings  # noqa: E402
from sketchtune_cli.compress.sketcher import sketch_layer  # noqa: E402
from sketchtune_cli.config import parse_override  # noqa: E402
from sketchtune_cli.models import load_model  # noqa: E402
from sketchtune_cli.sketch import decoder_layers  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_cells import write_json_report  # noqa: E402

PHASES = ("forward", "hessian", "prepare", "kmeans", "codes", "refit", "objective", "error")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", type=int, default=2, help="first decoder blocks to compress")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 4], help="groups_per_row settings to profile")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="other compress settings, e.g. --set refit_tolerance=0 (repeatable)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "compress_profile.json"))
    return p.parse_args(argv)


def truncated_model(name: str, blocks: int):
    """The model with only its first ``blocks`` decoder blocks (the pipeline visits every block it has)."""
    model, tokenizer = load_model(name, dtype="float32", device="cpu")
    blocks_name, layers = decoder_layers(model)
    parent, _, attr = blocks_name.rpartition(".")
    setattr(model.get_submodule(parent), attr, torch.nn.ModuleList(list(layers)[:blocks]))
    model.config.num_hidden_layers = blocks
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:blocks]
    return model, tokenizer


def profile(a, groups: int) -> dict:
    extra = {}
    for item in a.set:
        path, value = parse_override(item)
        extra[path[-1]] = value
    settings = CompressSettings(bits=a.bits, groups_per_row=groups, num_samples=a.samples, seq_len=a.seq_len,
                                calib="builtin", device="cpu", **extra)
    model, tokenizer = truncated_model(a.model, a.blocks)
    calib = load_calibration("builtin", tokenizer, a.samples, a.seq_len, settings.seed)
    layers: dict[str, dict] = {}
    flops = {"hessian": 0.0}
    hessians: set[int] = set()

    def sketch_fn(W, H, s):  # the product's sketcher; keeps the objective trajectory the manifest leaves out
        sketch, stats = sketch_layer(W, H, s)
        layers[f"{len(layers)}"] = {"shape": list(W.shape), "refit_rounds": stats.refit_rounds,
                                    "rel_error": stats.relative_error, "objectives": stats.refit_objectives}
        for phase, n in layer_flops(*W.shape, s, stats.refit_rounds, stats.kmeans_iterations).items():
            flops[phase] = flops.get(phase, 0.0) + n
        if H.data_ptr() not in hessians:  # one Hessian per group of linears sharing an input
            hessians.add(H.data_ptr())
            flops["hessian"] += hessian_flops(a.samples * a.seq_len, W.shape[1])
        return sketch, stats

    with timing.collect() as times:
        start = time.perf_counter()
        result = compress_model(model, calib.input_ids, settings, "cpu", sketch_fn=sketch_fn)
        wall = time.perf_counter() - start
    for key, name in zip(list(layers), result.layers):
        layers[name] = layers.pop(key)
    return {"groups_per_row": groups, "wall_s": wall, "phases": times.seconds, "calls": times.calls, "flops": flops,
            "settings": settings.model_dump(include={"bits", "groups_per_row", "lut_refit_rounds", "refit_tolerance",
                                                     "kmeans_iters", "block_size", "num_samples", "seq_len"}),
            "layers": layers}


def table(run: dict) -> str:
    wall = run["wall_s"]
    lines = [f"G={run['groups_per_row']}: {wall:.1f} s", "", "| phase | s | share | model GFLOP | GFLOP/s |",
             "|---|---:|---:|---:|---:|"]
    named = {p: run["phases"].get(p, 0.0) for p in PHASES}
    for p, s in named.items():
        f = run["flops"].get(p)  # the cost model's count (sketchtune_cli/compress/cost_model.py); forwards: none
        rate = f"{f / s / 1e9:.2f}" if f and s > 0 else "-"
        lines.append(f"| {p} | {s:.2f} | {s / wall:.1%} | {f / 1e9:.2f} | {rate} |" if f is not None
                     else f"| {p} | {s:.2f} | {s / wall:.1%} | - | - |")
    other = wall - sum(named.values())
    lines.append(f"| other | {other:.2f} | {other / wall:.1%} | - | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.manual_seed(0)
    runs = [profile(a, g) for g in a.groups]
    for run in runs:
        print(table(run) + "\n")
        for name, layer in run["layers"].items():
            objs = ", ".join(f"{o:.4g}" for o in layer["objectives"])
            print(f"  {name}: rounds {layer['refit_rounds']}, rel. error {layer['rel_error']:.4g}; objective {objs}")
        print()
    report = {"model": a.model, "blocks": a.blocks, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "runs": runs}
    write_json_report(a.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
