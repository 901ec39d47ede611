"""LUT refit formulations timed back to back on the same inputs (issue 21): the product's ``refit_luts``
against the refit it replaced (kept as the test reference in tests/compress/test_refit_equivalence.py) and
two rejected candidates written out below (a dense one-hot GEMM per group, and the Cholesky form
``M = (L^T A)^T (L^T A)`` with batched products), so the table can be reproduced.

    python scripts/bench_refit.py                 # the shapes of benchmarks/compress_profile.md
    python scripts/bench_refit.py --reps 5

Each repetition runs every formulation once, in turn, and the best of the repetitions is kept: on a loaded
machine the ratios within a repetition are what to trust, not the seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "compress"))
sys.path.insert(0, str(REPO / "scripts"))

from sketchtune_cli.compress.refit import _slots, _solve, refit_luts, weighted_rows  # noqa: E402
from bench_cells import write_json_report  # noqa: E402
from test_refit_equivalence import _previous_refit_rows  # noqa: E402

# (rows, cols, groups, bits): SmolLM2-135M's q/o (576x576), gate/up (1536x576), down (576x1536), and a
# few rows of Llama-3-8B's down_proj (4096x14336; all rows would take minutes per formulation here)
SHAPES = [(576, 576, 1, 4), (576, 576, 4, 4), (576, 576, 4, 2), (1536, 576, 4, 4), (576, 1536, 4, 4),
          (8, 14336, 4, 4)]


def dense_one_hot_rows(w, H, codes, lut):
    """Candidate: ``A^T H`` as one dense GEMM per group (one-hot ``[R*k, n]`` times H's group rows): 2^b
    times the sparse product's arithmetic, at GEMM speed."""
    R, cols = w.shape
    G, k = lut.shape[1], lut.shape[2]
    n = cols // G
    AtH = torch.empty(R, G, k, cols, device=w.device)
    c = codes.view(R, G, n)
    for g in range(G):
        oh = torch.zeros(R, k, n, device=w.device).scatter_(1, c[:, g].unsqueeze(1), 1.0)
        AtH[:, g] = (oh.view(R * k, n) @ H[g * n:(g + 1) * n]).view(R, k, cols)
    AtH = AtH.view(R, G * k, cols)
    slot = _slots(codes, G, k)
    M = torch.zeros(R, G * k, G * k, device=w.device).scatter_add_(2, slot.unsqueeze(1).expand(R, G * k, cols), AtH)
    return _solve(M, torch.einsum("rsc,rc->rs", AtH, w), lut)


def cholesky_rows(w, H, codes, lut, Lt):
    """Candidate: ``B = L^T A`` by a scatter of ``L^T``'s columns into slots, then ``M = B^T B`` and
    ``B^T (L^T w)`` by ``bmm`` (``Lt = L^T`` precomputed once per layer)."""
    R, cols = w.shape
    slots = lut.shape[1] * lut.shape[2]
    slot = _slots(codes, lut.shape[1], lut.shape[2])
    B = torch.zeros(R, cols, slots, device=w.device).scatter_add_(
        2, slot.unsqueeze(1).expand(R, cols, cols), Lt.unsqueeze(0).expand(R, cols, cols))
    Bt = B.transpose(1, 2)
    return _solve(Bt @ B, (Bt @ (w @ Lt.t()).unsqueeze(2)).squeeze(2), lut)


def problem(rows, cols, groups, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    if cols <= 4096:
        X = torch.randn(2 * cols, cols, generator=g)
        H = X.T @ X / X.shape[0]
    else:  # a Gram matrix of this size costs a TFLOP: any dense SPD matrix times the same
        B = torch.randn(cols, cols, generator=g) / cols ** 0.5
        H = (B + B.T) / 2
        H.diagonal().add_(4.0)
    k = 2 ** bits
    return (torch.randn(rows, cols, generator=g), H, torch.randint(0, k, (rows, cols), generator=g),
            torch.randn(rows, groups, k, generator=g).sort(-1).values)


def chunked(fn, W, H, codes, lut, *extra):
    """The row chunks ``refit_luts`` uses, around a candidate's per-chunk function (``extra``: its other arguments)."""
    rows, cols = W.shape
    G, k = lut.shape[1], lut.shape[2]
    chunk = max(1, min(rows, 256 * 2 ** 20 // (4 * G * k * cols)))
    out = torch.empty_like(lut)
    for r0 in range(0, rows, chunk):
        sl = slice(r0, r0 + chunk)
        out[sl] = fn(W[sl], H, codes[sl], lut[sl], *extra)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 steadies the "
                   "ratios on a machine another job shares")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "refit_formulations.json"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results = []
    print("| rows x cols | G | bits | previous s | new s (per round) | speed-up per round | new incl. H w | "
          "dense one-hot | Cholesky + bmm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows, cols, groups, bits in SHAPES:
        W, H, codes, lut = problem(rows, cols, groups, bits)
        Lt = torch.linalg.cholesky(H).T.contiguous() if cols <= 4096 else None  # once per layer: not timed
        Hw = weighted_rows(W, H)  # once per layer in the sketcher: not timed, like L^T
        runs = {"previous": lambda: chunked(_previous_refit_rows, W, H, codes, lut),
                "new": lambda: refit_luts(W, H, codes, lut, Hw),
                "new_with_Hw": lambda: refit_luts(W, H, codes, lut),
                "dense": lambda: chunked(dense_one_hot_rows, W, H, codes, lut)}
        if Lt is not None:
            runs["cholesky"] = lambda: chunked(cholesky_rows, W, H, codes, lut, Lt)
        best, outs = {}, {}
        for _ in range(a.reps):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        diff = {n: float((o - outs["previous"]).abs().max()) for n, o in outs.items()}
        ratio = {n: best["previous"] / s for n, s in best.items()}
        results.append({"rows": rows, "cols": cols, "groups": groups, "bits": bits, "seconds": best,
                        "speedup_vs_previous": ratio, "max_abs_diff_vs_previous": diff})
        chol = f"{ratio['cholesky']:.2f}x" if "cholesky" in ratio else "n/a"
        print(f"| {rows}x{cols} | {groups} | {bits} | {best['previous']:.3f} | {best['new']:.3f} | "
              f"{ratio['new']:.2f}x | {ratio['new_with_Hw']:.2f}x | {ratio['dense']:.2f}x | {chol} |", flush=True)
    write_json_report(a.out, {"torch": torch.__version__, "threads": torch.get_num_threads(), "reps": a.reps,
                              "note": "shared 2-core machine, another job running: compare ratios, not seconds",
                              "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
