"""Issue 18's measurement: the embedded SmolLM2-135M compressed by `sketchtune compress` without and with the
LUT distillation (compress.distill_steps), held-out perplexity of each on bench_compress's held-out texts
(LLM-Adapters test sets when SKETCHTUNE_DATA has them, never calibrated on, plus stdlib docstrings) and the
dense model's, in one run.

    python scripts/bench_distill.py --bits 3 --groups 1 --steps 30      # a pilot: ~15 min on 2 cores

Writes ``--out``/distill.json and distill.md. The embedded model's weights were 4-bit already (GGUF Q4_1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_compress import calibration_source, heldout_sets, perplexities  # noqa: E402
from sketchtune_cli.artifacts import read_manifest  # noqa: E402
from sketchtune_cli.compress.stage import run_compress  # noqa: E402
from sketchtune_cli.config import RunConfig  # noqa: E402
from sketchtune_cli.models import load_model  # noqa: E402
from sketchtune_cli.sketch import load_sketch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--samples", type=int, default=32, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="distillation steps")
    p.add_argument("--batch", type=int, default=4, help="sequences per distillation step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-windows", type=int, default=8, help="held-out windows per source")
    p.add_argument("--calib", default="auto")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "distill-pilot"))
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    calib, calib_desc = calibration_source(a.calib)
    dense, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
    sets = heldout_sets(tok, a.eval_windows, a.seq_len, seed=0)
    rows = [{"label": "dense", "perplexity": perplexities(dense, sets)}]
    del dense
    for steps in (0, a.steps):
        cfg = RunConfig.model_validate({
            "model": {"name": "smollm2-135m", "dtype": "float32"},
            "compress": {"bits": a.bits, "groups_per_row": a.groups, "calib": calib, "num_samples": a.samples,
                         "seq_len": a.seq_len, "device": "cpu", "lut_dtype": "float32", "dtype": "float32",
                         "distill_steps": steps, "distill_batch_size": a.batch, "distill_micro_batch_size": 2,
                         "distill_lr": a.lr},
        })
        target = out / f"sketch-b{a.bits}g{a.groups}-distill{steps}"
        start = time.perf_counter()
        run_compress(cfg, target, overwrite=True)
        wall = time.perf_counter() - start
        model = load_sketch(target)
        results = read_manifest(target).results
        rows.append({"label": f"sketch {a.bits}-bit G={a.groups}, distill {steps} steps", "wall_s": round(wall, 1),
                     "perplexity": perplexities(model, sets), "distill": results.get("distill")})
        print(json.dumps(rows[-1]["perplexity"]), f"{wall:.0f} s", flush=True)
    meta = {"calibration": f"{a.samples} x {a.seq_len} tokens of {calib_desc}", "heldout": {k: list(v.shape) for k, v in sets.items()},
            "distill": {"batch": a.batch, "lr": a.lr}, "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "distill.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    keys = [k for k in ("adapters", "docstrings") if k in rows[0]["perplexity"]]
    lines = [f"Calibration: {meta['calibration']}; held-out windows {meta['heldout']}; distillation batch {a.batch}, "
             f"lr {a.lr}. Embedded model (weights 4-bit already, GGUF Q4_1).", "",
             "| model | " + " | ".join(f"{k} ppl" for k in keys) + " | compress wall s |", "|---|" + "---:|" * (len(keys) + 1)]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(f"{r['perplexity'][k]:.3f}" for k in keys) + f" | {r.get('wall_s', '')} |")
    (out / "distill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
