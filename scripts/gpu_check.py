"""One script for when a GPU is lent: correctness of every Triton kernel on CUDA, then timings.

1. Correctness against the PyTorch references on CUDA: bits 2/3/4, fp32/bf16/fp16, odd shapes, NaN-filled
   outputs, and bit-for-bit determinism of the LUT gradients on a real-sized layer.
2. Timings (CUDA events, bf16, bits 4, groups_per_row 4) on 4096x4096, 4096x14336 and 14336x4096 layers
   (rows=out x cols=in) with 1, 16 and 2048 tokens: dense ``x @ W^T``; Triton dequantise; dequantise +
   dense matmul; an fp32 LUT dequantised to bf16 then cast, and cast inside the kernel (training's path);
   fused LUT matmul; LUT gradient from a materialised fp32 grad_W (dense grad_W matmul +
   binning); the tiled grad_y/x LUT gradient (no grad_W) and the materialised one (a bf16 GEMM with fp32
   output, then binning: what SketchedLinear's backward uses on CUDA, the faster of the two on an H200); and,
   as the dense baseline for training, the bf16 ``grad_y^T x`` a dense layer would compute.

Prints a table and writes JSON (``--out``, default ``benchmarks/gpu_check.json``; ``scripts/gpu_session.sh``
runs it with the compress-block timing and ``scripts/report_gpu.py`` renders the result). Without CUDA it says
so and exits 0 having checked nothing.

    python scripts/gpu_check.py [--out PATH] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sketchtune_kernels import (dequant_ref, lut_dequant, lut_grad, lut_grad_from_io, lut_grad_from_io_ref,
                                lut_grad_ref, lut_matmul, lut_matmul_ref, pack_codes)

LAYERS = [(4096, 4096), (4096, 14336), (14336, 4096)]
TOKENS = [1, 16, 2048]
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def random_layer(rows, cols, bits, groups, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, groups, cols // groups), generator=gen, dtype=torch.uint8)
    lut = torch.randn(rows, groups, 2**bits, generator=gen) * 0.02
    return lut.to(device=device, dtype=dtype), pack_codes(codes, bits).to(device)


def max_rel_err(got, expect) -> float:
    return ((got.float() - expect.float()).abs().max() / expect.float().abs().max().clamp_min(1e-12)).item()


def check_case(rows, groups, n, bits, dtype, tokens, dev="cuda") -> dict:
    """Each kernel against its reference; returns the errors and whether they are within tolerance."""
    cols = groups * n
    lut, codes = random_layer(rows, cols, bits, groups, dtype, dev, seed=rows + n + bits)
    torch.manual_seed(rows + n + bits + tokens)  # inputs reproducible too: a failing case reruns as it failed
    x = torch.randn(tokens, 2 * cols, device=dev).to(dtype)[:, ::2]  # non-contiguous
    grad_y = torch.randn(tokens, rows, device=dev).to(dtype)
    grad_w = torch.randn(rows, cols, device=dev).to(dtype)
    nan = lambda shape, dt: torch.full(shape, float("nan"), device=dev, dtype=dt)  # noqa: E731
    w = lut_dequant(lut, codes, bits, cols, backend="triton", out=nan((rows, cols), dtype))
    lut32 = lut.float() + torch.randn(lut.shape, device=dev) * 1e-4
    io_ref = lut_grad_from_io_ref(grad_y.double(), x.double(), codes, bits, groups)  # both grad_y/x kernels' reference
    errs = {
        "dequant": 0.0 if torch.equal(w, dequant_ref(lut, codes, bits, cols)) else float("inf"),
        # training's path: an fp32 LUT (values off the bf16/fp16 grid) written straight to the activations' dtype;
        # exact if the kernel gathers the right entries and rounds to nearest-even as torch does
        "dequant_cast": 0.0 if torch.equal(lut_dequant(lut32, codes, bits, cols, backend="triton", dtype=dtype),
                                           dequant_ref(lut32, codes, bits, cols).to(dtype)) else float("inf"),
        "matmul": max_rel_err(lut_matmul(x, lut, codes, bits, cols, backend="triton", out=nan((tokens, rows), dtype)),
                              lut_matmul_ref(x.float(), lut.float(), codes, bits, cols)),
        "lut_grad": max_rel_err(lut_grad(grad_w, codes, bits, groups, backend="triton"),
                                lut_grad_ref(grad_w.double(), codes, bits, groups)),
        "lut_grad_from_io": max_rel_err(lut_grad_from_io(grad_y, x, codes, bits, groups, backend="triton"), io_ref),
        "lut_grad_from_io_materialized": max_rel_err(
            lut_grad_from_io(grad_y, x, codes, bits, groups, backend="triton", materialize=True), io_ref),
    }
    # fp32 tl.dot follows torch's TF32 switch (off by default for matmul), so fp32 stays tight.
    ok = all(e <= TOL[dtype] for e in errs.values())
    return {"rows": rows, "groups": groups, "group_size": n, "bits": bits, "dtype": str(dtype), "tokens": tokens,
            "errors": errs, "ok": ok}


def check_determinism(dev="cuda", size=4096) -> dict:
    lut, codes = random_layer(size, size, 4, 4, torch.bfloat16, dev)
    grad_w = torch.randn(size, size, device=dev)
    grad_y, x = (torch.randn(512, size, device=dev, dtype=torch.bfloat16) for _ in range(2))
    a = [lut_grad(grad_w, codes, 4, 4, backend="triton") for _ in range(3)]
    b = [lut_grad_from_io(grad_y, x, codes, 4, 4, backend="triton") for _ in range(3)]
    c = [lut_grad_from_io(grad_y, x, codes, 4, 4, backend="triton", materialize=True) for _ in range(3)]
    return {"lut_grad": all(torch.equal(a[0], t) for t in a),
            "lut_grad_from_io": all(torch.equal(b[0], t) for t in b),
            "lut_grad_from_io_materialized": all(torch.equal(c[0], t) for t in c)}


def correctness(quick: bool) -> dict:
    shapes = [(33, 3, 57), (256, 4, 128), (1000, 2, 333)]
    tokens = [1, 16, 100] if not quick else [1, 100]
    cases = [check_case(r, g, n, bits, dt, t)
             for (r, g, n) in shapes for bits in (2, 3, 4)
             for dt in (torch.float32, torch.bfloat16, torch.float16) for t in tokens]
    bad = [c for c in cases if not c["ok"]]
    for c in bad:
        print(f"FAIL {c}")
    det = check_determinism()
    print(f"correctness: {len(cases) - len(bad)}/{len(cases)} cases ok; deterministic: {det}")
    return {"cases": cases, "failed": len(bad), "deterministic": det}


def cuda_time(fn, reps: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` CUDA-event-timed calls after warm-up (incl. compile)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_layer(rows, cols, tokens, bits=4, groups=4, reps=20) -> dict:
    dt, dev = torch.bfloat16, "cuda"
    lut, codes = random_layer(rows, cols, bits, groups, dt, dev)
    w = lut_dequant(lut, codes, bits, cols, backend="triton")
    lut32 = lut.float()  # training keeps fp32 LUTs
    x = torch.randn(tokens, cols, device=dev, dtype=dt)
    grad_y = torch.randn(tokens, rows, device=dev, dtype=dt)
    grad_w = torch.empty(rows, cols, device=dev, dtype=torch.float32)

    def grad_via_dense():  # the alternative to the fused kernel: fp32 grad_W, then bin it
        torch.matmul(grad_y.t().float(), x.float(), out=grad_w)
        return lut_grad(grad_w, codes, bits, groups, backend="triton")

    ops = {
        "dense_matmul": lambda: x @ w.t(),
        "dequant": lambda: lut_dequant(lut, codes, bits, cols, backend="triton"),
        "dequant_fp32_lut_then_cast": lambda: lut_dequant(lut32, codes, bits, cols, backend="triton").to(dt),
        "dequant_fp32_lut_cast_in_kernel": lambda: lut_dequant(lut32, codes, bits, cols, backend="triton", dtype=dt),
        "dequant+matmul": lambda: x @ lut_dequant(lut, codes, bits, cols, backend="triton").t(),
        "fused_matmul": lambda: lut_matmul(x, lut, codes, bits, cols, backend="triton"),
        "dense_grad_w_bf16": lambda: grad_y.t() @ x,
        "lut_grad_only": lambda: lut_grad(grad_w, codes, bits, groups, backend="triton"),
        "lut_grad_via_fp32_grad_w": grad_via_dense,
        "lut_grad_fused_io": lambda: lut_grad_from_io(grad_y, x, codes, bits, groups, backend="triton"),
        "lut_grad_materialized": lambda: lut_grad_from_io(grad_y, x, codes, bits, groups, backend="triton",
                                                          materialize=True),
    }
    ms = {name: cuda_time(fn, reps) for name, fn in ops.items()}
    return {"rows": rows, "cols": cols, "tokens": tokens, "bits": bits, "groups_per_row": groups, "ms": ms,
            "x_dense_matmul": {k: v / ms["dense_matmul"] for k, v in ms.items()}}


def timings(quick: bool) -> list[dict]:
    rows_out = []
    names = None
    for rows, cols in LAYERS:
        for tokens in TOKENS:
            r = time_layer(rows, cols, tokens, reps=5 if quick else 20)
            if names is None:
                names = list(r["ms"])
                print(f"{'layer':>12} {'tok':>5} " + " ".join(f"{n[:14]:>14}" for n in names) + "   (ms)")
            print(f"{rows:>5}x{cols:<6} {tokens:>5} " + " ".join(f"{r['ms'][n]:>14.4f}" for n in names))
            rows_out.append(r)
            torch.cuda.empty_cache()
    return rows_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="fewer correctness cases and timing reps")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing checked. Run this on a GPU machine "
              "(CPU coverage: pytest tests/kernels runs the same kernels under TRITON_INTERPRET=1).")
        return 0
    import triton

    start = time.time()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "correctness": correctness(args.quick)}
    if not args.skip_timing:
        report["timings"] = timings(args.quick)
    report["wall_s"] = time.time() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    ok = report["correctness"]["failed"] == 0 and all(report["correctness"]["deterministic"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
