"""CPU timings of the reference kernels against a dense matmul on real layer shapes.

What a CPU run can say: how much the PyTorch reference path (unpack, gather, scatter-add) costs relative
to the dense matmul it replaces, for a few tokens. Ratios are measured in one run because the machine is
noisy. Writes ``benchmarks/kernels_cpu.json``.

    python scripts/bench_kernels.py [--tokens 1 16] [--bits 4] [--groups-per-row 4] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sketchtune_kernels import dequant_ref, lut_grad_ref, lut_matmul_ref

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import LAYERS, random_layer  # noqa: E402  (the GPU check's layer shapes and random sketches)


def timeit(fn, budget_s: float = 1.0, max_reps: int = 3) -> float:
    """Median seconds of ``fn()`` after one warm-up call; stops early once ``budget_s`` is spent."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_layer(rows, cols, tokens, bits, groups_per_row, dtype) -> dict:
    lut, codes = random_layer(rows, cols, bits, groups_per_row, dtype, "cpu")
    w = dequant_ref(lut, codes, bits, cols)
    x = torch.randn(tokens, cols, dtype=dtype)
    grad_w = torch.randn(rows, cols, dtype=torch.float32)
    dense = timeit(lambda: x @ w.t())
    row = {"rows": rows, "cols": cols, "tokens": tokens, "dense_matmul_s": dense,
           "dequant_ref_s": timeit(lambda: dequant_ref(lut, codes, bits, cols)),
           "lut_matmul_ref_s": timeit(lambda: lut_matmul_ref(x, lut, codes, bits, cols)),
           "lut_grad_ref_s": timeit(lambda: lut_grad_ref(grad_w, codes, bits, groups_per_row))}
    for key in ("dequant_ref", "lut_matmul_ref", "lut_grad_ref"):
        row[f"{key}_x_dense"] = row[f"{key}_s"] / dense
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--groups-per-row", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="float32 by default: CPU bf16 matmul is not what a CPU user would run")
    parser.add_argument("--out", default="benchmarks/kernels_cpu.json")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    results = []
    print(f"{'layer':>12} {'tok':>4} {'dense ms':>9} {'dequant x':>10} {'matmul x':>9} {'lut_grad x':>10}")
    for rows, cols in LAYERS:
        lut_tokens = args.tokens
        for tokens in lut_tokens:
            r = bench_layer(rows, cols, tokens, args.bits, args.groups_per_row, dtype)
            results.append(r)
            print(f"{rows:>5}x{cols:<6} {tokens:>4} {r['dense_matmul_s'] * 1e3:>9.2f} "
                  f"{r['dequant_ref_x_dense']:>10.1f} {r['lut_matmul_ref_x_dense']:>9.1f} "
                  f"{r['lut_grad_ref_x_dense']:>10.1f}")
    report = {"what": "CPU reference kernels vs dense matmul; *_x_dense = time / dense matmul time",
              "bits": args.bits, "groups_per_row": args.groups_per_row, "dtype": args.dtype,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
