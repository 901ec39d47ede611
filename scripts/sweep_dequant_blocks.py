"""Times the Triton dequantise kernel at several launch configurations on a GPU, to choose
``triton_dequant.GPU_LAUNCH`` (BLOCK_R, BLOCK_C, num_warps) from measurements.

For Llama-3-8B's layer shapes (4096x4096, 4096x14336, 14336x4096), 4 bits, G=4, it times each configuration
writing a bf16 ``W_hat`` from a bf16 LUT (inference, export) and from an fp32 LUT (training: the cast happens in
the kernel), checks every output against the PyTorch reference bit for bit, and reports GB/s (bytes written +
packed codes read) next to a dense bf16 copy of the same weight as the bandwidth yardstick.

    python scripts/sweep_dequant_blocks.py [--out benchmarks/dequant_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import LAYERS, cuda_time, random_layer  # noqa: E402
from report_gpu import dequant_bytes  # noqa: E402

CONFIGS = [(32, 128, 4), (64, 128, 4), (16, 256, 4), (32, 256, 4), (32, 256, 8), (64, 256, 8), (16, 512, 4),
           (16, 512, 8), (8, 1024, 8), (32, 512, 8), (128, 128, 8), (64, 512, 16),
           (8, 512, 4), (4, 1024, 4), (4, 1024, 8), (4, 2048, 8), (8, 2048, 16), (2, 4096, 16), (1, 4096, 8)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/dequant_sweep.json")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--groups", type=int, default=4)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_dequant_blocks: no CUDA device visible to torch; nothing timed.")
        return 0
    from sketchtune_kernels import dequant_ref, lut_dequant
    from sketchtune_kernels import triton_dequant

    default = triton_dequant.GPU_LAUNCH
    rows_out, wrong = [], []
    for rows, cols in LAYERS:
        lut16, codes = random_layer(rows, cols, a.bits, a.groups, torch.bfloat16, "cuda")
        lut32 = lut16.float()
        expect = dequant_ref(lut32, codes, a.bits, cols).to(torch.bfloat16)
        dense = torch.empty(rows, cols, dtype=torch.bfloat16, device="cuda")
        copy_ms = cuda_time(lambda: dense.copy_(expect), 20)  # read + write 2 bytes a weight each
        moved = dequant_bytes(rows, cols, a.bits)
        for cfg in CONFIGS:
            triton_dequant.GPU_LAUNCH = cfg
            for lut_name, lut in (("bf16", lut16), ("fp32", lut32)):
                got = lut_dequant(lut, codes, a.bits, cols, backend="triton", dtype=torch.bfloat16)
                if not torch.equal(got, expect):
                    wrong.append((rows, cols, cfg, lut_name))
                ms = cuda_time(lambda: lut_dequant(lut, codes, a.bits, cols, backend="triton", dtype=torch.bfloat16), 20)
                rows_out.append({"rows": rows, "cols": cols, "block_r": cfg[0], "block_c": cfg[1], "num_warps": cfg[2],
                                 "lut": lut_name, "ms": ms, "gb_s": moved / (ms * 1e-3) / 1e9,
                                 "dense_copy_gb_s": rows * cols * 4 / (copy_ms * 1e-3) / 1e9})
            torch.cuda.empty_cache()
    triton_dequant.GPU_LAUNCH = default

    print("| layer | BLOCK_R | BLOCK_C | warps | GB/s bf16 LUT | GB/s fp32 LUT | dense copy GB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_key = {(r["rows"], r["cols"], r["block_r"], r["block_c"], r["num_warps"], r["lut"]): r for r in rows_out}
    for rows, cols in LAYERS:
        for cfg in CONFIGS:
            b, f = by_key[rows, cols, *cfg, "bf16"], by_key[rows, cols, *cfg, "fp32"]
            print(f"| {rows}x{cols} | {cfg[0]} | {cfg[1]} | {cfg[2]} | {b['gb_s']:.0f} | {f['gb_s']:.0f} | "
                  f"{b['dense_copy_gb_s']:.0f} |")
    # The choice: the configuration with the least total time over the three shapes and both LUT dtypes.
    total = {cfg: sum(by_key[r, c, *cfg, lut]["ms"] for r, c in LAYERS for lut in ("bf16", "fp32")) for cfg in CONFIGS}
    best = min(total, key=total.get)
    print(f"\nbest (least total time over shapes and LUT dtypes): {best}, {total[best]:.3f} ms vs the current "
          f"{default}: {total[default]:.3f} ms ({total[default] / total[best]:.2f}x)")
    print(f"outputs equal to the reference: {len(rows_out) - len(wrong)}/{len(rows_out)}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "bits": a.bits, "groups": a.groups,
                                       "current": default, "best": best, "total_ms": {str(k): v for k, v in total.items()},
                                       "rows": rows_out, "wrong": wrong}, indent=1) + "\n")
    print(a.out)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
