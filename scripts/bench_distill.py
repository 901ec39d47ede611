"""Issue 18's measurement: the embedded SmolLM2-135M compressed by the product's pipeline (4-bit G=1, 3-bit G=1,
3-bit G=4, 2-bit G=4 by default) and then LUT-distilled (compress/distill.py), with held-out perplexity before,
during (the steps-vs-perplexity curve) and after distillation, against dense and the RTN/HQQ peers at 4, 3 and 2
bits, all on bench_compress.py's held-out texts (LLM-Adapters test sets when SKETCHTUNE_DATA has them, never
calibrated or tuned on, plus stdlib docstrings) and its calibration (128 x 512 LLM-Adapters math training tokens).

    SKETCHTUNE_DATA=/path/to/llm-adapters python scripts/bench_distill.py           # the grid -> benchmarks/distill.*
    python scripts/bench_distill.py --list                                         # cells, done or not
    python scripts/bench_distill.py --seeds 2                                      # add seed 1 to every config
    python scripts/bench_distill.py --cells peers,b3g1-seed0                       # some cells only
    python scripts/bench_distill.py --report-only                                  # rebuild the report
    python scripts/bench_distill.py --smoke                                        # tiny grid, temp dir
    python scripts/bench_distill.py --lr-sweep 1e-4,3e-4,1e-3                      # choose --lr (see below)

Choosing the learning rate without held-out text: ``--lr-sweep`` builds the 3-bit G=1 sketch once, distills a
copy for ``--sweep-steps`` steps at each rate (the first steps of the grid's schedule: same warm-up, constant
after) and scores it on *validation* windows cut from the calibration source's documents that the calibration
never drew (the far end of the same shuffled list, checked disjoint). The result lands in
``<out>/cells/lr-sweep.json``; the grid is then run with ``--lr`` set to the rate with the lowest validation
perplexity, into its own ``--out`` (the rate is part of every cell's settings).

Resumable: each cell (``peers``; ``b<bits>g<G>-seed<k>``) writes ``<out>/cells/<cell>.json`` atomically and a rerun
skips finished cells (cells recorded under other settings are not reused), so the grid may span sessions. A
config cell builds the sketch once (``compress_model``), scores it, turns it into SketchedLinear layers with
float32 LUTs and distills them exactly as ``sketchtune compress --distill-steps`` does (``distill``), scoring the
student at each ``--curve`` step through a progress hook. Scores use the LUTs rounded to bfloat16, what the
saved artifact holds (``compress.lut_dtype``). Nothing is tuned on held-out text: one learning rate (the
default), one step count. The embedded model's weights were 4-bit already (GGUF Q4_1); the peers run at group 64
for that reason (bench_compress.py).

Sizing (2 cores, alone; measured 2026-12-03): a config cell ~7.5 min of compress, ~21-23 s per distillation
step at batch 4 x 512 tokens, ~1 min per held-out scoring (~26 min in all at 40 steps); the peers cell ~9 min.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_cells import cells_to_run, git_commit, read_cell, write_cell  # noqa: E402
from bench_compress import (Q4_1_NOTE, calibration_source, heldout_sets, hqq, perplexities, quantizer_bits,  # noqa: E402
                            rtn, sketch_bits, windows)
from sketchtune_cli import preemption  # noqa: E402
from sketchtune_cli.compress.calibration import (CHARS_PER_TOKEN_BUDGET, calibration_texts, load_calibration,  # noqa: E402
                                                 tokenize_stream)
from sketchtune_cli.compress.distill import distill  # noqa: E402
from sketchtune_cli.compress.pipeline import compress_model  # noqa: E402
from sketchtune_cli.compress.settings import CompressSettings  # noqa: E402
from sketchtune_cli.models import load_model  # noqa: E402
from sketchtune_cli.sketch import find_target_linears, replace_with_sketches, sketched_layers  # noqa: E402

MODEL = "smollm2-135m"
PEER_BITS = (4, 3, 2)
PEER_GROUP = 64


@dataclass
class Settings:
    configs: str = "4:1,3:1,3:4,2:4"  # bits:groups_per_row
    seeds: int = 1
    steps: int = 40
    curve: str = "10,20,40"  # distillation steps at which the student is scored (the last = steps)
    samples: int = 128
    seq_len: int = 512
    batch: int = 4
    micro: int = 2
    lr: float = 1e-4
    warmup: int = 10
    eval_windows: int = 16
    threads: int = 2
    calib: str = "auto"

    def key(self) -> dict:
        """What a finished cell must have been run with to be reused."""
        return {k: v for k, v in asdict(self).items() if k not in ("configs", "seeds", "threads")}

    def config_list(self) -> list[tuple[int, int]]:
        return [tuple(int(x) for x in c.split(":")) for c in self.configs.split(",") if c]

    def curve_steps(self) -> list[int]:
        return sorted({int(x) for x in self.curve.split(",") if x and int(x) <= self.steps} | {self.steps})


def cells(s: Settings) -> list[str]:
    out = ["peers"]
    for seed in range(s.seeds):
        out += [f"b{bits}g{groups}-seed{seed}" for bits, groups in s.config_list()]
    return out


PEER_KEYS = ("samples", "seq_len", "eval_windows", "calib")  # all the peers depend on (no distillation)


def cell_key(s: Settings, cell: str) -> dict:
    key = s.key()
    return {k: key[k] for k in PEER_KEYS} if cell == "peers" else key


def done(out: Path, cell: str, s: Settings) -> bool:
    """Run under these settings (a cell from other settings is not reused; the peers cell only needs the
    same texts, so a grid at another learning rate or step count reuses it when copied into its cells/)."""
    record = read_cell(out, cell)
    return record is not None and all(record.get("settings", {}).get(k) == v for k, v in cell_key(s, cell).items())


# ---- the cells ---------------------------------------------------------------------------------------------

def headline(ppl: dict) -> float:
    """The number the targets are judged on: math + commonsense pooled (bench_compress's), else docstrings."""
    return ppl.get("adapters", ppl.get("docstrings"))


def run_peers(s: Settings, tok, sets) -> dict:
    model, _ = load_model(MODEL, dtype="float32", device="cpu")
    targets = find_target_linears(model)
    dense = {n: m.weight.detach().clone() for n, m in targets.items()}
    rows = [{"label": "dense", "bits_per_weight": 16.0, "ppl": perplexities(model, sets)}]
    for bits in PEER_BITS:
        for name, fn in (("RTN", rtn), ("HQQ", hqq)):
            for n, lin in targets.items():
                lin.weight.data.copy_(fn(dense[n], bits, PEER_GROUP))
            rows.append({"label": f"{name} {bits}b g{PEER_GROUP}", "bits_per_weight": quantizer_bits(bits, PEER_GROUP),
                         "ppl": perplexities(model, sets)})
            print(f"  {rows[-1]['label']}: {headline(rows[-1]['ppl']):.3f}", file=sys.stderr, flush=True)
    return {"rows": rows}


def score_as_saved(model, sets) -> dict:
    """Held-out perplexities with every LUT rounded to bfloat16 (the saved artifact's dtype), then restored."""
    luts = {name: layer.lut.data.clone() for name, layer in sketched_layers(model).items()}
    was_training = model.training
    model.eval()
    for name, layer in sketched_layers(model).items():
        layer.lut.data = luts[name].to(torch.bfloat16).float()
    try:
        return perplexities(model, sets)
    finally:
        for name, layer in sketched_layers(model).items():
            layer.lut.data = luts[name]
        model.train(was_training)


def run_config(s: Settings, bits: int, groups: int, seed: int, tok, sets, calib, calib_source: str) -> dict:
    model, _ = load_model(MODEL, dtype="float32", device="cpu")
    bpw = sketch_bits(find_target_linears(model), bits, groups)
    settings = CompressSettings(calib=calib_source, num_samples=s.samples, seq_len=s.seq_len, bits=bits,
                                groups_per_row=groups, seed=seed, lut_dtype="bfloat16", distill_steps=s.steps,
                                distill_lr=s.lr, distill_batch_size=s.batch, distill_micro_batch_size=s.micro,
                                distill_warmup_steps=s.warmup)
    t = time.perf_counter()
    result = compress_model(model, calib, settings, "cpu")
    compress_s = time.perf_counter() - t
    replace_with_sketches(model, result.sketches, lut_dtype=torch.float32)
    curve = [{"step": 0, "ppl": score_as_saved(model, sets)}]
    print(f"  step 0: {headline(curve[-1]['ppl']):.3f} ({compress_s:.0f} s to build)", file=sys.stderr, flush=True)
    wanted = set(s.curve_steps())

    def on_progress(stage: str, steps_done: int) -> None:
        if stage == "distill" and steps_done in wanted:
            curve.append({"step": steps_done, "ppl": score_as_saved(model, sets)})
            print(f"  step {steps_done}: {headline(curve[-1]['ppl']):.3f}", file=sys.stderr, flush=True)

    summary = distill_watched(model, tok, calib, settings, on_progress, "bench-distill")
    return {"bits": bits, "groups": groups, "seed": seed, "bits_per_weight": round(bpw, 4),
            "compress_s": round(compress_s, 1), "distill_s": round(summary["train_seconds"], 1),
            "distill_loss": [summary.get("first_loss"), summary.get("final_loss")],
            "loss_curve": summary.get("loss_curve"), "curve": curve}


def distill_watched(model, tok, calib, settings: CompressSettings, on_progress, name: str) -> dict:
    """The product's ``distill`` of the model's LUTs (teacher: the dense model) in a scratch folder, with
    ``on_progress`` hooked in to score the student at chosen steps; ``name``: the folder prefix and fingerprint."""
    preemption.add_progress_hook(on_progress)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            return distill(model, lambda: load_model(MODEL, dtype="float32", device="cpu")[0], tok, calib, settings,
                           torch.device("cpu"), Path(tmp), fingerprint=name, resume=False)
    finally:
        preemption.remove_progress_hook(on_progress)


def validation_windows(calib_source: str, tok, s: Settings) -> torch.Tensor:
    """``eval_windows`` x ``seq_len`` tokens from the calibration source's documents that the calibration
    never drew: load_calibration reads the documents it shuffled (seed 0) in order up to a character budget
    (enlarged only when they tokenize short), so the documents past that budget are unseen; taken from the
    far end of the list, less any that repeat a calibration document."""
    docs = calibration_texts(calib_source, 0, 10**15)
    budget = s.samples * s.seq_len * CHARS_PER_TOKEN_BUDGET
    while True:  # load_calibration's own rule for how much it reads
        reach = calibration_texts(calib_source, 0, budget)
        if len(tokenize_stream(reach, tok)) >= s.samples * s.seq_len or sum(map(len, reach)) < budget:
            break
        budget *= 4
    seen = set(reach)  # the file repeats some records: a repeat of a calibration document is not unseen
    held = [d for d in reversed(docs[len(reach):]) if d not in seen]
    ids = windows(held, tok, s.eval_windows, s.seq_len) if held else None
    if ids is None or ids.shape[0] < s.eval_windows:
        raise SystemExit(f"calibration source {calib_source}: too little text beyond the calibration's "
                         f"{len(reach)} documents for {s.eval_windows} validation windows")
    return ids


def run_lr_sweep(s: Settings, lrs: list[float], sweep_steps: int, tok, calib, calib_source: str) -> dict:
    """3-bit G=1, seed 0: one build, then each rate distills a fresh copy of its LUTs for ``sweep_steps``."""
    val = {"calib-validation": validation_windows(calib_source, tok, s)}  # before the build: fail fast
    model, _ = load_model(MODEL, dtype="float32", device="cpu")
    settings = CompressSettings(calib=calib_source, num_samples=s.samples, seq_len=s.seq_len, bits=3,
                                groups_per_row=1, seed=0, lut_dtype="bfloat16", distill_steps=sweep_steps,
                                distill_batch_size=s.batch, distill_micro_batch_size=s.micro,
                                distill_warmup_steps=s.warmup)
    result = compress_model(model, calib, settings, "cpu")
    replace_with_sketches(model, result.sketches, lut_dtype=torch.float32)
    built = {name: layer.lut.data.clone() for name, layer in sketched_layers(model).items()}
    rows = [{"lr": None, "step": 0, "ppl": score_as_saved(model, val)["calib-validation"]}]
    print(f"  layer-wise: validation ppl {rows[0]['ppl']:.3f}", file=sys.stderr, flush=True)
    for lr in lrs:
        for name, layer in sketched_layers(model).items():
            layer.lut.data = built[name].clone()
        model.train()

        def on_progress(stage: str, steps_done: int, lr=lr) -> None:
            if stage == "distill" and steps_done in (sweep_steps // 2, sweep_steps):
                rows.append({"lr": lr, "step": steps_done, "ppl": score_as_saved(model, val)["calib-validation"]})
                print(f"  lr {lr:g} step {steps_done}: validation ppl {rows[-1]['ppl']:.3f}", file=sys.stderr, flush=True)

        distill_watched(model, tok, calib, settings.model_copy(update={"distill_lr": lr}), on_progress,
                        "bench-distill-sweep")
    final = [r for r in rows if r["step"] == sweep_steps]
    best = min(final, key=lambda r: r["ppl"])["lr"]
    return {"rows": rows, "sweep_steps": sweep_steps, "chosen_lr": best, "validation": list(val["calib-validation"].shape)}


# ---- the report --------------------------------------------------------------------------------------------

def _mean_range(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{sum(xs) / len(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def summarize(results: dict) -> dict:
    """Per config: headline perplexity before / after distillation over seeds, wall times; the peers; the
    issue's targets judged on the seed means."""
    peers = {r["label"]: headline(r["ppl"]) for r in results.get("peers", {}).get("rows", [])}
    configs: dict[str, dict] = {}
    for name, r in results.items():
        if name == "peers":
            continue
        c = configs.setdefault(f"{r['bits']}-bit G={r['groups']}", {"bits_per_weight": r["bits_per_weight"], "runs": []})
        c["runs"].append({"seed": r["seed"], "before": headline(r["curve"][0]["ppl"]),
                          "after": headline(r["curve"][-1]["ppl"]), "steps": r["curve"][-1]["step"],
                          "compress_s": r["compress_s"], "distill_s": r["distill_s"]})
    checks = []
    dense, hqq4 = peers.get("dense"), peers.get(f"HQQ 4b g{PEER_GROUP}")

    def after(label):
        runs = configs.get(label, {}).get("runs")
        return sum(x["after"] for x in runs) / len(runs) if runs else None

    if dense and hqq4:
        a = after("3-bit G=1")
        if a is not None:
            checks.append(("3-bit G=1 distilled <= HQQ 4-bit g64", f"{a:.3f} vs {hqq4:.3f}", a <= hqq4))
        a = after("2-bit G=4")
        if a is not None:
            peers2 = {k: v for k, v in peers.items() if k.endswith(f"2b g{PEER_GROUP}")}
            checks.append(("2-bit G=4 distilled <= 2.0x dense", f"{a / dense:.2f}x", a <= 2.0 * dense))
            checks.append(("2-bit RTN/HQQ peers far above", ", ".join(f"{k} {v / dense:.1f}x" for k, v in peers2.items()),
                           all(v > 4.0 * dense for v in peers2.values()) if peers2 else None))
        a = after("4-bit G=1")
        if a is not None:
            ratio = (a - dense) / (hqq4 - dense)
            checks.append(("4-bit G=1 distilled excess <= 0.15x HQQ 4-bit's", f"{ratio:.2f}x", ratio <= 0.15))
    return {"peers": peers, "configs": configs, "checks": checks}


def markdown(report: dict) -> str:
    s, summ = report["settings"], report["summary"]
    lines = [
        "# LUT distillation after the layer-wise build (issue 18)", "",
        f"`scripts/bench_distill.py`, the embedded SmolLM2-135M ({Q4_1_NOTE}). Calibration: {report['calibration']}; "
        f"held-out windows {report['heldout']} (never calibrated or tuned on); headline = math + commonsense "
        f"pooled perplexity. Distillation: {s['steps']} steps of batch {s['batch']} calibration sequences (micro "
        f"{s['micro']}), AdamW lr {s['lr']} constant after {s['warmup']} warm-up steps, KL to the dense model on "
        f"the fly; scored with bfloat16 LUTs. Cells done: {report['cells_done']}/{report['cells_total']}; "
        f"run alone on the project's 2-core CPU (commits {', '.join(report['commits'])}).", "",
        "## Peers (same held-out texts, same run of the grid)", "", "| model | bits/weight | ppl |", "|---|---:|---:|"]
    for r in report["peer_rows"]:
        lines.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {headline(r['ppl']):.3f} |")
    lines += ["", "## Sketches before and after distillation (mean over seeds, (min-max) with 2+)", "",
              "| sketch | bits/weight | seeds | ppl layer-wise | ppl distilled | build s | distill s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, c in summ["configs"].items():
        runs = c["runs"]
        lines.append(f"| {label} | {c['bits_per_weight']:.3f} | {len(runs)} | {_mean_range([x['before'] for x in runs])} "
                     f"| {_mean_range([x['after'] for x in runs])} | {_mean_range([x['compress_s'] for x in runs])} "
                     f"| {_mean_range([x['distill_s'] for x in runs])} |")
    lines += ["", "## The issue's targets", "", "| target | measured | met |", "|---|---|---|"]
    for what, measured, ok in summ["checks"]:
        lines.append(f"| {what} | {measured} | {'n/a' if ok is None else 'yes' if ok else 'NO'} |")
    sweep = report.get("lr_sweep")
    if sweep:
        lines += ["", "## How the learning rate was chosen (`--lr-sweep`, never on held-out text)", "",
                  f"3-bit G=1 seed 0 built once; each rate distilled a fresh copy for {sweep['sweep_steps']} steps (the "
                  f"grid's warm-up, constant after) and was scored on {sweep['validation'][0]} x {sweep['validation'][1]} "
                  f"validation tokens of the calibration source's documents that the calibration never drew. "
                  f"Chosen: **{sweep['chosen_lr']:g}**.", "", "| lr | step | validation ppl |", "|---|---:|---:|"]
        for r in sweep["rows"]:
            lines.append(f"| {'layer-wise' if r['lr'] is None else format(r['lr'], 'g')} | {r['step']} | {r['ppl']:.3f} |")
    lines += ["", f"Steps vs held-out perplexity: `{Path(report['plot']).name}`.", "",
              "## What it shows", "", report.get("conclusion") or "(written after the grid has run)", ""]
    return "\n".join(lines)


def plot(results: dict, peers: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in sorted(results.items()):
        if name == "peers":
            continue
        ax.plot([p["step"] for p in r["curve"]], [headline(p["ppl"]) for p in r["curve"]], marker="o",
                label=f"{r['bits']}-bit G={r['groups']} seed {r['seed']}")
    for label, style in (("dense", "k--"), (f"HQQ 4b g{PEER_GROUP}", "r:")):
        if label in peers:
            ax.axhline(peers[label], color=style[0], linestyle=style[1:], label=label)
    ax.set(xlabel="distillation step", ylabel="held-out perplexity (math + commonsense)", yscale="log",
           title="LUT distillation: steps vs held-out perplexity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, s: Settings, conclusion: str | None = None) -> dict:
    grid = cells(s)
    results = {c: read_cell(out, c) for c in grid if done(out, c, s)}
    previous = out.with_suffix(".json")
    if conclusion is None and previous.is_file():
        conclusion = json.loads(previous.read_text()).get("conclusion")
    summary = summarize(results)
    any_cell = next(iter(results.values()), {})
    report = {"settings": asdict(s), "cells_done": len(results), "cells_total": len(grid), "summary": summary,
              "peer_rows": results.get("peers", {}).get("rows", []),
              "calibration": any_cell.get("calibration", ""), "heldout": any_cell.get("heldout", {}),
              "commits": sorted({r.get("commit", "unknown") for r in results.values()}),
              "plot": str(out.with_name(out.name + "_curve.png")), "conclusion": conclusion, "cells": results,
              "lr_sweep": read_cell(out, "lr-sweep")}
    if results:
        plot(results, summary["peers"], Path(report["plot"]))
    previous.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


# ---- main --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "distill"), help="report stem; cells under <out>/cells/")
    p.add_argument("--cells", default="", help="run only these cells (comma-separated, see --list)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--conclusion", help="the paragraph on what the grid shows (kept in the report)")
    p.add_argument("--smoke", action="store_true", help="tiny grid into a temp dir (2 configs, 2 steps, few tokens)")
    p.add_argument("--lr-sweep", default="", help="comma-separated rates: choose --lr on calibration validation text")
    p.add_argument("--sweep-steps", type=int, default=20)
    a = p.parse_args(argv)
    if a.smoke:
        a.configs, a.steps, a.curve, a.samples, a.seq_len, a.batch, a.eval_windows = "4:1,2:4", 2, "1", 4, 64, 2, 1
        a.warmup = 0
        if a.out == p.get_default("out"):
            a.out = tempfile.mkdtemp(prefix="bench-distill-smoke-") + "/distill"
    s = Settings(**{k: getattr(a, k) for k in asdict(defaults)})
    out = Path(a.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    grid = cells(s)
    if a.list:
        for c in grid:
            print(f"{c:20s} {'done' if done(out, c, s) else '-'}")
        return 0
    if a.report_only:
        print(markdown(write_report(out, s, a.conclusion)))
        return 0
    todo = cells_to_run(a.cells, grid, lambda c: done(out, c, s))
    torch.set_num_threads(s.threads)
    _, tok = load_model(MODEL, dtype="float32", device="cpu")
    sets = heldout_sets(tok, s.eval_windows, s.seq_len, seed=0)
    calib_source, calib_desc = calibration_source(s.calib)
    calib = load_calibration(calib_source, tok, s.samples, s.seq_len, seed=0).input_ids
    commit, start = git_commit(), time.perf_counter()
    if a.lr_sweep:
        r = run_lr_sweep(s, [float(x) for x in a.lr_sweep.split(",")], a.sweep_steps, tok, calib, calib_source)
        r.update(cell="lr-sweep", settings=s.key(), commit=commit, wall_s=round(time.perf_counter() - start, 1),
                 calibration=f"{s.samples} x {s.seq_len} tokens of {calib_desc}", torch=torch.__version__)
        write_cell(out, "lr-sweep", r)
        print(json.dumps(r, indent=1))
        return 0
    for i, c in enumerate(todo):
        print(f"== cell {i + 1}/{len(todo)} {c}; {time.perf_counter() - start:.0f} s so far", file=sys.stderr, flush=True)
        t = time.perf_counter()
        if c == "peers":
            r = run_peers(s, tok, sets)
        else:
            config, seed = c.split("-seed")
            bits, groups = (int(x) for x in config[1:].split("g"))
            r = run_config(s, bits, groups, int(seed), tok, sets, calib, calib_source)
        r.update(cell=c, settings=s.key(), commit=commit, wall_s=round(time.perf_counter() - t, 1),
                 calibration=f"{s.samples} x {s.seq_len} tokens of {calib_desc}",
                 heldout={k: list(v.shape) for k, v in sets.items()}, torch=torch.__version__, threads=s.threads)
        write_cell(out, c, r)
        write_report(out, s, a.conclusion)
    print(markdown(write_report(out, s, a.conclusion)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
