"""Times the fused LUT matmul's decode launch (1 and 16 tokens) at several configurations on a GPU, to choose
``triton_matmul.GPU_DECODE`` (BLOCK_R, BLOCK_K, num_warps, programs per SM for the K split) from measurements.

For Llama-3-8B's layer shapes (4096x4096, 4096x14336, 14336x4096), 4 bits, G=4, bf16 x and bf16 LUT, it times
``lut_matmul(..., backend="triton")`` at each configuration, checks every output against the PyTorch reference
(relative error within gpu_check's bf16 tolerance), and reports milliseconds next to the dense bf16
``x @ W^T`` of the same layer, timed in the same run.

    python scripts/sweep_matmul_blocks.py [--out benchmarks/matmul_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import LAYERS, TOL, cuda_time, max_rel_err, random_layer  # noqa: E402

TOKENS = [1, 16]
# (BLOCK_R, BLOCK_K, num_warps, programs per SM). 17 distinct (BLOCK_R, BLOCK_K, warps) kernels; the split
# target only changes the grid, so it is varied where it is cheap. The first is the current default.
CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 4), (64, 64, 2, 8), (64, 128, 4, 1), (64, 128, 4, 2), (64, 128, 4, 4),
           (64, 128, 8, 2), (64, 256, 4, 2), (64, 256, 8, 2), (64, 256, 8, 4), (64, 512, 8, 2),
           (32, 128, 4, 2), (32, 128, 4, 4), (32, 256, 4, 2), (32, 256, 4, 8), (32, 512, 4, 2), (32, 512, 8, 4),
           (16, 128, 2, 4), (16, 256, 2, 2), (16, 256, 2, 8), (16, 512, 4, 4),
           (128, 64, 4, 2), (128, 128, 8, 1), (128, 128, 8, 2), (128, 256, 8, 1)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/matmul_sweep.json")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--groups", type=int, default=4)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_matmul_blocks: no CUDA device visible to torch; nothing timed.")
        return 0
    from sketchtune_kernels import lut_dequant, lut_matmul, lut_matmul_ref
    from sketchtune_kernels import triton_matmul

    default = triton_matmul.GPU_DECODE
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows_out, wrong, failed, dense_ms = [], [], [], {}
    for rows, cols in LAYERS:
        lut, codes = random_layer(rows, cols, a.bits, a.groups, torch.bfloat16, "cuda")
        w = lut_dequant(lut, codes, a.bits, cols, backend="triton")
        for tokens in TOKENS:
            x = torch.randn(tokens, cols, device="cuda", dtype=torch.bfloat16)
            expect = lut_matmul_ref(x.float(), lut.float(), codes, a.bits, cols)
            dense_ms[rows, cols, tokens] = cuda_time(lambda: x @ w.t(), 20)
            for cfg in CONFIGS:
                triton_matmul.GPU_DECODE = cfg
                try:
                    err = max_rel_err(lut_matmul(x, lut, codes, a.bits, cols, backend="triton"), expect)
                    ms = cuda_time(lambda: lut_matmul(x, lut, codes, a.bits, cols, backend="triton"), 20)
                except Exception as e:  # noqa: BLE001 -- e.g. OutOfResources (too big a tile): not a candidate
                    failed.append((rows, cols, tokens, cfg, f"{type(e).__name__}: {e}"[:300]))
                    print(f"FAILED {failed[-1]}")
                    continue
                if not err <= TOL[torch.bfloat16]:
                    wrong.append((rows, cols, tokens, cfg, err))
                splits = triton_matmul._decode_launch(tokens, rows, cols, sms)[3]
                rows_out.append({"rows": rows, "cols": cols, "tokens": tokens, "block_r": cfg[0], "block_k": cfg[1],
                                 "num_warps": cfg[2], "per_sm": cfg[3], "splits": splits, "ms": ms, "rel_err": err,
                                 "dense_ms": dense_ms[rows, cols, tokens]})
        del lut, codes, w
        torch.cuda.empty_cache()
    triton_matmul.GPU_DECODE = default

    by_key = {(r["rows"], r["cols"], r["tokens"], r["block_r"], r["block_k"], r["num_warps"], r["per_sm"]): r
              for r in rows_out}
    cases = [(r, c, t) for r, c in LAYERS for t in TOKENS]
    print("| BLOCK_R | BLOCK_K | warps | per SM | " + " | ".join(f"{r}x{c} t={t} ms (x dense)" for r, c, t in cases)
          + " | total ms |")
    print("|" + "---:|" * (len(cases) + 5))
    total = {}
    for cfg in CONFIGS:
        got = [by_key.get((*case, *cfg)) for case in cases]
        cells = [f"{g['ms']:.4f} ({g['ms'] / g['dense_ms']:.2f})" if g else "failed" for g in got]
        if all(got) and not any(w[3] == cfg for w in wrong):  # a wrong or failed config is not a candidate
            total[cfg] = sum(g["ms"] for g in got)
        print(f"| {' | '.join(map(str, cfg))} | {' | '.join(cells)} | {total.get(cfg, float('nan')):.4f} |")
    print("| dense bf16 x @ W^T | | | | " + " | ".join(f"{dense_ms[case]:.4f}" for case in cases)
          + f" | {sum(dense_ms.values()):.4f} |")
    # The choice: the configuration with the least total time over the three shapes and both token counts.
    best = min(total, key=total.get) if total else None
    cur = total.get(default, float("nan"))
    if best:
        print(f"\nbest (least total time over shapes and token counts): {best}, {total[best]:.4f} ms vs the current "
              f"{default}: {cur:.4f} ms ({cur / total[best]:.2f}x); dense bf16: {sum(dense_ms.values()):.4f} ms")
    print(f"outputs within bf16 tolerance ({TOL[torch.bfloat16]}): {len(rows_out) - len(wrong)}/{len(rows_out)}; "
          f"configurations that failed to run: {len(failed)}")
    for case in wrong:
        print(f"WRONG {case}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "bits": a.bits, "groups": a.groups,
                                       "tokens": TOKENS, "current": default, "best": best,
                                       "total_ms": {str(k): v for k, v in total.items()},
                                       "dense_ms": {str(k): v for k, v in dense_ms.items()},
                                       "rows": rows_out, "wrong": wrong, "failed": failed}, indent=1) + "\n")
    print(a.out)
    # Exit 1 on a wrong output, or on a failure other than a tile that does not fit.
    return 1 if wrong or not best or any(not f[-1].startswith("OutOfResources") for f in failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
