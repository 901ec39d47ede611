"""Adaptation benchmark (issue 17): sketch fine-tuning vs LoRA, QLoRA (bitsandbytes NF4) and full fine-tuning
of the embedded SmolLM2-135M on one commonsense mix, same data and token budget, scored on the same test sets.

Data: the LLM-Adapters training files boolq, ARC-Easy, ARC-Challenge, openbookqa (``*/train.json``, ~17.7k
records) de-duplicated, mixed and shuffled with seed 0; the first ``--val-n`` records are the validation split
(learning-rate choice and the validation loss), never trained on; each seed draws its training records from the
rest in its own fixed order (seed k: ``random.Random(1000 + k)``), the same records for every method of a seed.
Test sets: boolq, piqa, ARC-Easy, ARC-Challenge, openbookqa (``*/test.json``), the first ``--test-limit`` of
each (0 = full sets; the same examples for every cell), in both the generation (st_<task>, greedy, max
``--max-new-tokens``) and log-likelihood (st_<task>_ll) variants, through the eval stage's own code
(``bench_finetune.accuracy``: bundled task YAMLs, lm-eval HFLM on the in-memory model).

Methods (trainable counts matched where the paper matches them; ranks from ``lora_rank_matching``):

- sketch-g4 / sketch-g1: LUT-only fine-tuning of calibrated 4-bit sketches from ``sketchtune compress``
  (bases cached under benchmarks/.cache/bases/, see bench_finetune.py);
- lora-g4 / lora-g1: PEFT LoRA (alpha 2r, all 7 projections) on the dense model, r matching G=4 (33) / G=1 (8);
- qlora-g4: the same LoRA on bitsandbytes ``Linear4bit`` NF4 (block 64, fp32 compute) linears (bnb >= 0.50
  runs NF4 on the CPU);
- full: every weight of the dense model (the ceiling);
- floors (untrained): floor-dense, floor-nf4, floor-sketch-g4, floor-sketch-g1.

Every trained cell: AdamW (wd 0), linear schedule with ``--warmup`` steps, clip 1.0, loss over response tokens,
``--steps`` x ``--batch`` (micro ``--micro``), max ``--seq-len`` tokens. Learning rate: per method, a sweep of
three values (``sweep-<method>-lr<x>`` cells: ``--sweep-steps`` steps on seed 0's first records, scored by the
validation loss); the train cells use the value with the lowest validation loss (recorded). Seeds: 2 for
sketch-g4, lora-g4, qlora-g4 (``--seeds``), 1 for the others; a seed changes the training-record order and
torch's seed (LoRA's initialisation).

Every scored cell also records ``top_answer_share`` per task: the % of test examples given the most common
answer (generation: the filtered answer; log-likelihood: the most likely option), so a model that learned only
the answer format (one label everywhere; its score is then that label's frequency) shows as such.

Resumable: every cell (floor, sweep point, method x seed) runs in its own subprocess (peak RSS via getrusage)
and writes ``<out>/cells/<cell>.json`` when it ends; a rerun skips cells whose file exists with the same
settings hash (and refuses to mix settings in one folder). Order: floors dense and sketch-g4, then the main
comparison (sketch-g4, lora-g4, qlora-g4: sweeps, seed 0), then the other floors and methods, then seed 1, so a
partial grid is already informative. The report (``<out>.md``, ``<out>.json``, ``<out>_loss.png``) is rebuilt
after each cell, or alone with ``--report-only``.

    SKETCHTUNE_DATA=/work/shared/data/llm-adapters python scripts/bench_adapt.py     # the grid -> benchmarks/adapt.*
    python scripts/bench_adapt.py --report-only                                      # rebuild the report
    python scripts/bench_adapt.py --cells floor-dense,train-sketch-g4-seed0          # some cells only
    python scripts/bench_adapt.py --list                                             # cells, done or not
    python scripts/bench_adapt.py --smoke                                            # tiny grid, temp dir

Learning-rate centres: configs/commonsense.yaml's 2e-5 is Llama-3-8B's at batch 64 over 3 epochs; for 80 small
steps on a 135M model (200 here) the centres are bench_finetune's (sketch 1e-4, LoRA/QLoRA 3e-4) and 3e-5 for full
fine-tuning, each swept x/÷3. A chosen value at the edge of its sweep is flagged in the report.

Sizing (measured alone on this 2-core machine at 2 threads, 2026-12-03 07:40 UTC, load average < 1.2; SIZING
below holds the per-unit costs and ``--plan`` prints the prediction for any settings):

- Unit costs (``--measure``, first run: micro 8, logits at every position): a step of batch 8 (~740 tokens) 8.3 s sketch-g4, 8.2 sketch-g1, 6.8 LoRA, 7.0
  QLoRA (bnb NF4 dequantizes every forward), 8.6 full; validation 0.28 s per record; eval 0.34-0.69 s per
  generated answer (32 new tokens, batch 16) and 0.16-0.45 s per log-likelihood example, by task, plus ~1.5 s
  per task; a cell's process start and model load 12-15 s; the calibrated bases G=4 + G=1 177 + 126 s.
  (Runs of the same commands while other jobs shared the cores measured 5-10x these: time alone.)
- Grid: 31 cells = 4 floors + 18 sweep cells (6 methods x 3 LRs) + 9 train cells (sketch-g4, lora-g4, qlora-g4
  x 2 seeds; sketch-g1, lora-g1, full x 1); 13 scored cells (floors + trains).
- Defaults (2026-12-03, second run): 200 steps x batch 8 (1,600 records, ~9% of an epoch of the mix; micro 4;
  the trainer's target-only logits), 20-step sweeps, warmup 20, validation 64 records, the first 40 test
  examples per task and variant. Measured alone in that run: a 200-step cell 1,973 s (sketch-g4) and ~1,900 s
  (LoRA r=33) with eval, a 20-step sweep cell ~160 s, a floor ~210-250 s, the calibrated bases ~6 min; the
  whole 31-cell grid ~5.5 h, so it spans sessions (cells resume).
- Step times drift upward within one process, for every method (sketch 6.9 -> 9.7 s, LoRA 6.7 -> 7.7 s
  per 20-step window over 200 steps, load average 2.0 = the cell alone): a per-process effect (allocator,
  suspected, not yet isolated). Cells now record each step's seconds and the load average.
- Measured: 40 steps (the pilot, benchmarks/adapt-pilot.md) and 200 steps (benchmarks/adapt.md) both leave
  the 135M model near each task's label prior (most-common-answer shares 45-100%): the test accuracies
  cannot rank methods at this budget; the validation loss and the cost columns can. A ranking budget is ~an
  epoch or more (~2,200 steps, ~5 h per cell here): a GPU run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_finetune as bf  # noqa: E402  (shared machinery: bases, LoRA, accuracy, training loop)
from bench_cells import cell_file, cells_to_run, git_commit, read_cell, write_cell  # noqa: E402

REPO = bf.REPO
TRAIN_FOLDERS = ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]
TEST_TASKS = ["st_boolq", "st_piqa", "st_arc_easy", "st_arc_challenge", "st_openbookqa"]
TEST_SIZES = {"st_boolq": 3270, "st_piqa": 1838, "st_arc_easy": 2376, "st_arc_challenge": 1172, "st_openbookqa": 500}


@dataclass(frozen=True)
class Method:
    name: str
    base: str  # dense | nf4 | sketch
    adapter: str  # none | lora | luts | full
    groups: int = 4  # sketch G, or the G whose trainable count a LoRA rank matches
    lrs: tuple = ()  # the sweep, centre in the middle
    seeds: int = 1


METHODS = {m.name: m for m in [
    Method("floor-dense", "dense", "none"),
    Method("floor-sketch-g4", "sketch", "none", 4),
    Method("sketch-g4", "sketch", "luts", 4, (3e-5, 1e-4, 3e-4), 2),
    Method("lora-g4", "dense", "lora", 4, (1e-4, 3e-4, 1e-3), 2),
    Method("qlora-g4", "nf4", "lora", 4, (1e-4, 3e-4, 1e-3), 2),
    Method("floor-nf4", "nf4", "none"),
    Method("floor-sketch-g1", "sketch", "none", 1),
    Method("sketch-g1", "sketch", "luts", 1, (3e-5, 1e-4, 3e-4)),
    Method("lora-g1", "dense", "lora", 1, (1e-4, 3e-4, 1e-3)),
    Method("full", "dense", "full", 4, (1e-5, 3e-5, 1e-4)),
]}
FLOOR_OF = {"sketch-g4": "floor-sketch-g4", "sketch-g1": "floor-sketch-g1", "lora-g4": "floor-dense",
            "lora-g1": "floor-dense", "qlora-g4": "floor-nf4", "full": "floor-dense"}
MAIN = ["sketch-g4", "lora-g4", "qlora-g4"]

# Measured per-unit costs (seconds; 2 threads, alone) that --plan and the ETA use; see the docstring.
# Step: one optimizer step of batch 8 (~685 real, ~1000 padded tokens of the mix); eval: one test example of one
# variant; load: a cell's process start, imports, model load and data read; val: one validation record.
SIZING = {  # measured alone on this 2-core machine at 2 threads, 2026-12-03 07:40 UTC (--measure, load avg < 1.2)
    "load": {"dense": 12.0, "sketch": 14.0, "nf4": 15.0},
    # step: sketch-g4 and lora-g4 are the second run's 200-step means (micro 4, drift included); the others
    # the first run's --measure (micro 8), not yet re-measured
    "step": {"sketch-g4": 8.75, "sketch-g1": 8.2, "lora-g4": 7.98, "lora-g1": 6.8, "qlora-g4": 7.0, "full": 8.6},
    "eval_per_example": {"st_boolq": 0.35, "st_piqa": 0.69, "st_arc_easy": 0.40, "st_arc_challenge": 0.61,
                         "st_openbookqa": 0.34, "st_boolq_ll": 0.16, "st_piqa_ll": 0.45, "st_arc_easy_ll": 0.31,
                         "st_arc_challenge_ll": 0.41, "st_openbookqa_ll": 0.30},
    "eval_per_task": 1.5,
    "val_per_record": 0.28,
    "base_build": {"g4": 177.0, "g1": 126.0},
}


# ---- settings and cells --------------------------------------------------------------------------------

@dataclass
class Settings:
    steps: int = 200
    sweep_steps: int = 20
    batch: int = 8
    micro: int = 4
    seq_len: int = 256
    warmup: int = 20
    val_n: int = 64
    test_limit: int = 40
    max_new_tokens: int = 32
    eval_batch: int = 16
    seeds: int = 2
    threads: int = 2
    bases: str = "calibrated"  # calibrated | rtn
    data_dir: str = ""
    methods: list = field(default_factory=lambda: list(METHODS))

    def key(self) -> str:
        """Hash of what changes a cell's numbers (not threads, not where the data lies)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("threads", "data_dir", "methods")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def cells(s: Settings) -> list[str]:
    """Every cell of the grid, in run order (floors and the main comparison first)."""
    out: list[str] = []
    chosen = [m for m in METHODS if m in s.methods]

    def method_cells(name: str, seed: int) -> list[str]:
        m = METHODS[name]
        if m.adapter == "none":
            return [name]
        sweep = [f"sweep-{name}-lr{lr_tag(lr)}" for lr in m.lrs] if seed == 0 and len(m.lrs) > 1 else []
        return sweep + [f"train-{name}-seed{seed}"]

    first = ["floor-dense", "floor-sketch-g4", *MAIN]
    for name in [n for n in first if n in chosen] + [n for n in chosen if n not in first]:
        out += method_cells(name, 0)
    for seed in range(1, s.seeds):
        out += [f"train-{n}-seed{seed}" for n in chosen if METHODS[n].seeds > seed]
    return out


def parse_cell(cell: str) -> tuple[Method, str, int, float | None]:
    """(method, kind floor|sweep|train, seed, sweep lr)."""
    if cell.startswith("sweep-"):
        name, _, lr = cell[len("sweep-"):].rpartition("-lr")
        return METHODS[name], "sweep", 0, float(lr)
    if cell.startswith("train-"):
        name, _, seed = cell[len("train-"):].rpartition("-seed")
        return METHODS[name], "train", int(seed), None
    return METHODS[cell], "floor", 0, None


def done(out: Path, cell: str, s: Settings) -> bool:
    """True when the cell's result file exists for these settings; a file from other settings is an error."""
    record = read_cell(out, cell)
    if record is None:
        return False
    if record.get("settings_key") != s.key():
        raise SystemExit(f"{cell_file(out, cell)} was written with other settings ({record.get('settings_key')} != "
                         f"{s.key()}): use another --out, or delete it")
    return True


def chosen_lr(out: Path, method: Method) -> tuple[float, dict]:
    """The sweep value with the lowest validation loss ({lr: loss} alongside); the centre without a sweep."""
    if len(method.lrs) <= 1:
        return (method.lrs[0] if method.lrs else 0.0), {}
    losses = {}
    for lr in method.lrs:
        f = cell_file(out, f"sweep-{method.name}-lr{lr_tag(lr)}")
        if not f.is_file():
            raise SystemExit(f"sweep cell {f.stem} has not run: run the grid in order (or include it in --cells)")
        losses[lr] = json.loads(f.read_text())["val_loss_after"]
    return min(losses, key=lambda lr: (losses[lr], lr)), {lr_tag(k): v for k, v in losses.items()}


# ---- data ----------------------------------------------------------------------------------------------

def mixed_records(data_dir: str | Path) -> list[dict]:
    """The four training files, de-duplicated on (instruction, input, output), shuffled with seed 0; each record
    tagged with its source folder (``task``)."""
    seen, out = set(), []
    for folder in TRAIN_FOLDERS:
        for r in json.loads((Path(data_dir) / folder / "train.json").read_text()):
            k = (r["instruction"], r.get("input", ""), r["output"])
            if k not in seen:
                seen.add(k)
                out.append({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"], "task": folder})
    random.Random(0).shuffle(out)
    return out


def split(records: list[dict], val_n: int, n_train: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(the training records of ``seed``: n_train from the non-validation pool in that seed's order, another
    reshuffled pass if n_train exceeds the pool; the validation records: the mix's first val_n)."""
    val, pool = records[:val_n], records[val_n:]
    rng, train = random.Random(1000 + seed), []
    while len(train) < n_train:
        order = list(pool)
        rng.shuffle(order)
        train += order[:n_train - len(train)]
    return train, val


# ---- models --------------------------------------------------------------------------------------------

def nf4_quantize(model):
    """Every target linear -> bitsandbytes Linear4bit NF4 (block 64, fp32 compute), quantized on the CPU."""
    import bitsandbytes as bnb
    import torch

    from sketchtune_cli.sketch import find_target_linears

    for name, lin in find_target_linears(model).items():
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=torch.float32, quant_type="nf4", quant_storage=torch.uint8)
        q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q.to("cpu"))  # .to() quantizes
    return model


def nf4_extra_bytes(model) -> int:
    """Bytes bnb keeps outside parameters (each Linear4bit's absmax per 64-block, fp32)."""
    n = 0
    for m in model.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            n += qs.absmax.numel() * qs.absmax.element_size()
    return n


def build(method: Method, bases: dict):
    """(model, tokenizer, trainable params, LoRA rank or None) for a method."""
    from sketchtune_cli.models import load_model

    if method.base == "sketch":
        model, tok, params = bf.sketch_model(bases[f"g{method.groups}"])
        return model, tok, (params if method.adapter == "luts" else []), None
    model, tok = load_model("smollm2-135m", dtype="float32")
    if method.base == "nf4":
        model = nf4_quantize(model)
    if method.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        rank = bf.lora_rank_matching(method.groups)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=bf.TARGETS, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        return model, tok, [p for p in model.parameters() if p.requires_grad], rank
    for p in model.parameters():
        p.requires_grad_(method.adapter == "full")
    return model, tok, ([p for p in model.parameters()] if method.adapter == "full" else []), None


def cache_dense(model) -> None:
    """Sketch layers keep their reconstructed weight between no-grad forwards (validation, eval), as
    ``sketchtune eval`` does; turned on only after the peak RSS of load + training has been read."""
    from sketchtune_cli.sketch import SketchedLinear

    for m in model.modules():
        if isinstance(m, SketchedLinear):
            m.cache_dense_on_cpu = True


def test_specs(s: Settings) -> list[tuple[str, int | None]]:
    """(task, limit) for the generation and log-likelihood variants; None = the full set."""
    lim = lambda t: None if s.test_limit <= 0 or s.test_limit >= TEST_SIZES[t] else s.test_limit  # noqa: E731
    return [(t, lim(t)) for t in TEST_TASKS] + [(f"{t}_ll", lim(t)) for t in TEST_TASKS]


# ---- one cell (worker subprocess) ----------------------------------------------------------------------

def run_cell(cell: str, s: Settings, bases: dict, lr: float | None, lr_sweep: dict) -> dict:
    import torch
    from transformers import get_scheduler

    from sketchtune_cli.finetune.data import tokenize_records

    method, kind, seed, sweep_lr = parse_cell(cell)
    lr = sweep_lr if kind == "sweep" else lr
    torch.manual_seed(seed)
    torch.set_num_threads(s.threads)
    load_avg_start = os.getloadavg()[0]  # a cell run beside other work shows here (and in its step times)
    t_load = time.perf_counter()
    model, tok, params, rank = build(method, bases)
    load_s = time.perf_counter() - t_load
    # the base as stored: the dense/NF4 model without its LoRA adapters; a sketch with its LUTs (they are its
    # weights, trained or not, as the paper counts a sketch's size); full fine-tuning: the whole dense model
    mem, bf16 = bf.base_bytes(model, params if method.adapter == "lora" else [])
    extra = nf4_extra_bytes(model)
    out = {"cell": cell, "method": method.name, "kind": kind, "seed": seed, "settings_key": s.key(),
           "threads": s.threads, "trainable_params": sum(p.numel() for p in params), "lora_rank": rank,
           "base_bytes_in_memory": mem + extra, "base_bytes_bf16": bf16 + extra, "load_s": round(load_s, 1)}
    if method.base == "sketch":
        out["sketch_base"] = bases[f"g{method.groups}"]
    if method.base == "nf4":
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    steps = s.sweep_steps if kind == "sweep" else s.steps
    records = mixed_records(s.data_dir)
    train_recs, val_recs = split(records, s.val_n, steps * s.batch if kind != "floor" else 0, seed)
    val, _ = tokenize_records(val_recs, tok, "alpaca", s.seq_len)
    if kind != "floor":
        train, _ = tokenize_records(train_recs, tok, "alpaca", s.seq_len)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=False)
        sched = get_scheduler("linear", opt, num_warmup_steps=min(s.warmup, steps // 5), num_training_steps=steps)
        ns = argparse.Namespace(steps=steps, batch=s.batch, micro=s.micro, method=cell)
        times, tokens, losses = bf.train_steps(model, params, opt, sched, train, pad, ns)
        steady = slice(1, None) if steps > 2 else slice(None)
        out.update({
            "lr": lr, "lr_sweep_val_loss": lr_sweep, "steps": steps, "train_s": round(sum(times), 1),
            "step_time_s": round(sum(times[steady]) / len(times[steady]), 4),
            "tokens_per_s": round(sum(tokens[steady]) / sum(times[steady]), 1), "tokens": sum(tokens),
            "train_loss": [round(x, 4) for x in losses], "step_times": [round(x, 2) for x in times],
        })
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # load + training only
    cache_dense(model)
    t0 = time.perf_counter()
    out["val_loss" if kind == "floor" else "val_loss_after"] = round(bf.mean_token_loss(model, val, pad, s.micro), 4)
    out["val_s"] = round(time.perf_counter() - t0, 1)
    if kind != "sweep":
        ns = argparse.Namespace(method=cell, eval_data_dir=s.data_dir, max_new_tokens=s.max_new_tokens, eval_batch=s.eval_batch)
        out["top_answer_share"] = {}
        out["accuracy"], out["eval_s"] = bf.accuracy(model, tok, ns, test_specs(s), out["top_answer_share"])
    out["load_avg_1min"] = [round(load_avg_start, 2), round(os.getloadavg()[0], 2)]
    return out


def measure_cell(name: str, s: Settings, bases: dict, steps: int, limits: tuple[int, int]) -> dict:
    """Per-unit costs of one method at the settings (wall and CPU seconds): model load, ``steps`` training steps,
    the validation loss over val_n records, and each test task at two limits (overhead vs per example)."""
    import torch
    from transformers import get_scheduler

    from sketchtune_cli.finetune.data import tokenize_records

    def clock():
        return time.perf_counter(), time.process_time()

    def since(t):
        return round(time.perf_counter() - t[0], 2), round(time.process_time() - t[1], 2)

    method = METHODS[name]
    torch.manual_seed(0)
    torch.set_num_threads(s.threads)
    t = clock()
    model, tok, params, _ = build(method, bases)
    out = {"method": name, "threads": s.threads, "load": since(t)}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_recs, val_recs = split(mixed_records(s.data_dir), s.val_n, (steps + 1) * s.batch, 0)
    val, _ = tokenize_records(val_recs, tok, "alpaca", s.seq_len)
    if params:
        train, _ = tokenize_records(train_recs, tok, "alpaca", s.seq_len)
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, foreach=False)
        sched = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=steps + 1)
        ns = argparse.Namespace(steps=1, batch=s.batch, micro=s.micro, method=name)
        bf.train_steps(model, params, opt, sched, train, pad, ns)  # the first step pays one-time costs
        ns.steps = steps
        t = clock()
        _, tokens, _ = bf.train_steps(model, params, opt, sched, train[s.batch:], pad, ns)
        wall, cpu = since(t)
        out["step"] = (round(wall / steps, 2), round(cpu / steps, 2))
        out["tokens_per_step"] = sum(tokens) / steps
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    cache_dense(model)
    t = clock()
    bf.mean_token_loss(model, val, pad, s.micro)
    out["val"] = since(t)
    if limits[1]:
        ns = argparse.Namespace(method=name, eval_data_dir=s.data_dir, max_new_tokens=s.max_new_tokens, eval_batch=s.eval_batch)
        for lim in limits:
            t0 = time.process_time()
            _, secs = bf.accuracy(model, tok, ns, [(t, lim) for t, _ in test_specs(s)])
            out[f"eval_wall_{lim}"], out[f"eval_cpu_{lim}"] = secs, round(time.process_time() - t0, 1)
    return out


# ---- report --------------------------------------------------------------------------------------------

def aggregate(values: list[float]) -> dict:
    """Mean and range (min, max, max - min) of one number over seeds."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "range": max(values) - min(values), "n": len(values)}


def averages(acc: dict) -> dict:
    """Average accuracy over the five tasks, per variant (gen, ll), when all five are there."""
    out = {}
    for variant, suffix in (("gen", ""), ("ll", "_ll")):
        vals = [acc.get(t + suffix) for t in TEST_TASKS]
        if all(v is not None for v in vals):
            out[variant] = sum(vals) / len(vals)
    return out


def summarize(results: dict[str, dict]) -> dict:
    """Per method: mean/range over its seeds of each accuracy, the averages, and the cost columns."""
    by_method: dict[str, list[dict]] = {}
    for r in results.values():
        if r["kind"] in ("floor", "train"):
            by_method.setdefault(r["method"], []).append(r)
    out = {}
    for name, rs in by_method.items():
        rs.sort(key=lambda r: r["seed"])
        accs = [{**r.get("accuracy", {}), **{f"avg_{k}": v for k, v in averages(r.get("accuracy", {})).items()}} for r in rs]
        keys = [k for k in accs[0] if all(k in a for a in accs)]
        m = {"seeds": [r["seed"] for r in rs], "accuracy": {k: aggregate([a[k] for a in accs]) for k in keys}}
        for col in ("trainable_params", "lora_rank", "base_bytes_bf16", "base_bytes_in_memory", "lr", "lr_sweep_val_loss"):
            m[col] = rs[0].get(col)
        for col in ("peak_rss_mb", "step_time_s", "tokens_per_s", "val_loss_after", "val_loss"):
            vals = [r[col] for r in rs if col in r]
            if vals:
                m[col] = sum(vals) / len(vals)
        out[name] = m
    return out


def verdicts(summary: dict) -> list[str]:
    """Is each trained method above its untrained floor on the five-task average by more than its seed range?"""
    lines = []
    for name, m in summary.items():
        floor = summary.get(FLOOR_OF.get(name, ""))
        if not floor:
            continue
        for v in ("avg_gen", "avg_ll"):
            a, f = m["accuracy"].get(v), floor["accuracy"].get(v)
            if a and f:
                gain = a["mean"] - f["mean"]
                ok = gain - a["range"] > 0.01  # points (scores carry 4 decimals); one seed: range 0
                lines.append(f"{name} {v}: {a['mean']:.1f} vs floor {f['mean']:.1f} ({gain:+.1f} pts; seed range "
                             f"{a['range']:.1f}, n={a['n']}) -> {'above the floor' if ok else 'NOT above the floor by more than the seed range'}")
    return lines


def sampling_se(accuracy: dict, counts: dict, suffix: str) -> float | None:
    """Standard error (points) of a five-task average accuracy from the test sample alone: a task scored on n
    examples at accuracy p varies by sqrt(p (1 - p) / n) over test samples, an average of five by the root of
    the summed variances / 5. The error of a difference of two methods is at most the root of both squared
    (they are scored on the same examples, which only lowers it)."""
    var = 0.0
    for t in TEST_TASKS:
        a = accuracy.get(t + suffix)
        if a is None or not counts.get(t):
            return None
        p = a["mean"] / 100
        var += p * (1 - p) / counts[t]
    return 100 * var ** 0.5 / len(TEST_TASKS)


def ratios(summary: dict, counts: dict) -> dict:
    g4, out = summary.get("sketch-g4"), {}
    for other in ("lora-g4", "qlora-g4"):
        o = summary.get(other)
        if not (g4 and o):
            continue
        r = {c: g4[c] / o[c] for c in ("base_bytes_bf16", "peak_rss_mb", "step_time_s", "tokens_per_s", "trainable_params")
             if g4.get(c) and o.get(c)}
        for k, a in g4["accuracy"].items():
            if k in o["accuracy"]:
                r[f"{k} (pts)"] = a["mean"] - o["accuracy"][k]["mean"]
        for variant, suffix in (("avg_gen", ""), ("avg_ll", "_ll")):
            se = [sampling_se(m["accuracy"], counts, suffix) for m in (g4, o)]
            if None not in se:
                r[f"{variant} sampling s.e. of the difference (pts)"] = (se[0] ** 2 + se[1] ** 2) ** 0.5
        out[f"sketch-g4 / {other}"] = r
    return out


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_acc(a: dict | None) -> str:
    if not a:
        return "-"
    return f"{a['mean']:.1f}" + (f" ({a['min']:.1f}-{a['max']:.1f})" if a["n"] > 1 else "")


def markdown(report: dict) -> str:
    s, summ = report["settings"], report["summary"]
    counts = ", ".join(f"{t} {n}" for t, n in report["test_counts"].items())
    lines = [
        "# Adaptation benchmark: sketch vs LoRA, QLoRA and full fine-tuning (CPU, embedded SmolLM2-135M)", "",
        f"Model: SmolLM2-135M-Instruct as embedded (its weights were Q4_1 4-bit already: every figure here is on "
        f"that model). Run {report['cells_done']}/{report['cells_total']} cells of the grid"
        f"{' (complete)' if report['cells_done'] == report['cells_total'] else ' (PARTIAL)'}, each in its own process, "
        f"{report['threads']} thread(s); meant to run alone on the 2-core machine. Code: commit(s) "
        f"{', '.join(report.get('commits') or ['-'])} of this repository.", "",
        f"Data: LLM-Adapters train files {', '.join(TRAIN_FOLDERS)} ({report['data']['records']} unique records) mixed "
        f"with seed 0; validation = the first {s['val_n']} (LR choice, never trained on). Every trained cell: "
        f"{s['steps']} steps x batch {s['batch']} (micro {s['micro']}), max {s['seq_len']} tokens, AdamW, linear "
        f"schedule, warmup {s['warmup']}, clip 1.0; LR sweeps {s['sweep_steps']} steps on seed 0's records.", "",
        f"Test examples per task (the first N of each test.json, the same for every cell): {counts}; generation greedy, "
        f"max {s['max_new_tokens']} new tokens; log-likelihood over the answer options. QLoRA = PEFT LoRA on "
        f"bitsandbytes {report.get('bitsandbytes') or ''} Linear4bit NF4 (block 64, fp32 compute) on the CPU.", "",
        "## Accuracy (%; mean over seeds, (min-max) where there are 2+)", "",
    ]
    cols = [*TEST_TASKS, "avg_gen", *[t + "_ll" for t in TEST_TASKS], "avg_ll"]
    lines += ["| method | seeds | " + " | ".join(c.replace("st_", "") for c in cols) + " |",
              "|---|---|" + "---:|" * len(cols)]
    for name in [m for m in METHODS if m in summ]:
        m = summ[name]
        lines.append(f"| {name} | {len(m['seeds'])} | " + " | ".join(_fmt_acc(m["accuracy"].get(c)) for c in cols) + " |")
    lines += ["", "## Cost", "", "Base MB: the frozen model as stored with float tensors in bf16 (dense or NF4 without the "
              "LoRA adapters; a sketch with its LUTs; full: the dense model). Peak RSS: load + training, before any eval.", "",
              "| method | trainable | LoRA r | base MB (bf16 storage) | peak RSS MB | step s | tok/s | "
              "LR chosen (sweep: val loss) | val loss |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name in [m for m in METHODS if m in summ]:
        m = summ[name]
        sweep = ", ".join(f"{k}: {v:.4f}" for k, v in (m.get("lr_sweep_val_loss") or {}).items())
        lr = f"{m['lr']:.0e} ({sweep})" if m.get("lr") else "-"
        if m.get("lr") and METHODS[name].lrs and m["lr"] in (min(METHODS[name].lrs), max(METHODS[name].lrs)):
            lr += " EDGE of the sweep"
        val = m.get("val_loss_after", m.get("val_loss"))
        lines.append(f"| {name} | {m['trainable_params']:,} | {m.get('lora_rank') or '-'} | {m['base_bytes_bf16'] / 1e6:.1f} | "
                     f"{m.get('peak_rss_mb', 0):.0f} | {_num(m.get('step_time_s'), 2)} | {_num(m.get('tokens_per_s'), 0)} | {lr} | "
                     + (f"{val:.4f} |" if val is not None else " - |"))
    lines += ["", "## Sketch G=4 against LoRA and QLoRA (same run; accuracies in points, others as ratios)", ""]
    for k, v in report["ratios"].items():
        lines.append(f"- {k}: " + ", ".join(f"{n} {x:.1f}" if "s.e." in n else f"{n} {x:+.1f}" if n.endswith("(pts)")
                                           else f"{n} {x:.2f}" for n, x in v.items()))
    lines += answer_share_lines(report["cells"])
    lines += ["", "## Above the untrained floor?", "", *[f"- {v}" for v in report["verdicts"]], "",
              "## What it shows", "", report.get("conclusion") or "(written after the full grid has run)", "",
              f"Loss curves: {report['plot']}", ""]
    return "\n".join(lines)


def answer_share_lines(cells_: dict) -> list[str]:
    """Markdown: per scored cell, the % of test examples given its most common answer (generation / log-likelihood
    averages over the tasks); near 100 means one label everywhere, and its accuracy is that label's frequency."""
    rows = []
    for c, r in sorted(cells_.items()):
        share = r.get("top_answer_share")
        if not share:
            continue
        gen = [v for t, v in share.items() if not t.endswith("_ll")]
        ll = [v for t, v in share.items() if t.endswith("_ll")]
        rows.append(f"| {c} | {sum(gen) / len(gen):.1f} | {sum(ll) / len(ll):.1f} |")
    if not rows:
        return []
    return ["", "## Most common answer (% of test examples, mean over tasks)", "",
            "| cell | generation | log-likelihood |", "|---|---:|---:|", *rows]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in sorted(results.values(), key=lambda r: r["cell"]):
        if r["kind"] != "train" or r["seed"] != 0:
            continue
        y, w = r["train_loss"], max(1, len(r["train_loss"]) // 15)
        smooth = [sum(y[max(0, i - w + 1):i + 1]) / len(y[max(0, i - w + 1):i + 1]) for i in range(len(y))]
        ax.plot(range(1, len(y) + 1), smooth, label=f"{r['method']} (lr {r['lr']:.0e})")
    ax.set(xlabel="step", ylabel="train loss per response token (moving mean, log scale)", title="Training loss, seed 0")
    ax.set_yscale("log")  # the format is learned in ~25 steps; the slow part after it is what ranks methods
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, s: Settings, conclusion: str | None = None) -> dict:
    all_cells = cells(s)
    results = {c: r for c in all_cells if (r := read_cell(out, c)) is not None}
    summary = summarize(results)
    png = out.with_name(out.name + "_loss.png")
    report = {
        "settings": asdict(s), "settings_key": s.key(), "cells_total": len(all_cells), "cells_done": len(results),
        "data": {"train_folders": TRAIN_FOLDERS, "records": len(mixed_records(s.data_dir))},
        "test_counts": {t: (n or TEST_SIZES[t]) for t, n in test_specs(s) if not t.endswith("_ll")},
        "summary": summary, "verdicts": verdicts(summary), "conclusion": conclusion,
        "threads": ", ".join(sorted({str(r.get("threads", "?")) for r in results.values()})) or str(s.threads),
        "commits": sorted({r.get("commit", "not recorded") for r in results.values()}),
        "bitsandbytes": next((r["bitsandbytes"] for r in results.values() if "bitsandbytes" in r), None),
        "plot": png.name,
        "cells": {c: {k: v for k, v in r.items() if k not in ("train_loss", "step_times")} for c, r in results.items()},
    }
    report["ratios"] = ratios(summary, report["test_counts"])
    if any(r["kind"] == "train" for r in results.values()):
        plot(results, png)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


# ---- sizing --------------------------------------------------------------------------------------------

def predict(s: Settings) -> dict:
    """Predicted seconds per cell kind and in all, from SIZING (measured per-unit costs)."""
    z = SIZING
    ev = sum(z["eval_per_task"] + z["eval_per_example"].get(t, 0) * (n or TEST_SIZES[t.removesuffix("_ll")])
             for t, n in test_specs(s))
    val = z["val_per_record"] * s.val_n
    total, per = 0.0, {}
    for c in cells(s):
        m, kind, _, _ = parse_cell(c)
        steps = {"floor": 0, "sweep": s.sweep_steps, "train": s.steps}[kind]
        sec = z["load"].get(m.base, 0) + val + steps * z["step"].get(m.name, 0) * s.batch / 8
        sec += ev if kind != "sweep" else 0
        per[c] = round(sec)
        total += sec
    bases = sum(z["base_build"].values()) if s.bases == "calibrated" else 0
    return {"cells": per, "eval_per_cell_s": round(ev), "bases_s": bases, "total_s": round(total + bases)}


# ---- driver --------------------------------------------------------------------------------------------

def sketch_bases(s: Settings, tmp: Path, todo: list[str]) -> dict:
    """{"g4": path, "g1": path} for the sketch bases the cells to run need (built or taken from the cache)."""
    need = sorted({m.groups for m in (parse_cell(c)[0] for c in todo) if m.base == "sketch"})
    out = {}
    for g in need:
        if s.bases == "rtn":
            out[f"g{g}"] = str(bf.rtn_sketch_artifact(tmp / f"rtn-g{g}", g))
        else:
            ns = argparse.Namespace(calib="builtin", calib_samples=32, calib_seq_len=256, threads=s.threads, rebuild_bases=False)
            out[f"g{g}"] = str(bf.calibrated_base(ns, g)[0])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    for k in ("steps", "sweep_steps", "batch", "micro", "seq_len", "warmup", "val_n", "test_limit", "max_new_tokens",
              "eval_batch", "seeds", "threads"):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=getattr(d, k))
    p.add_argument("--rtn-bases", action="store_true", help="data-free RTN sketch bases instead of calibrated ones")
    p.add_argument("--methods", default=",".join(METHODS), help="methods (and floors) in the grid")
    p.add_argument("--cells", default="", help="run only these cells (comma-separated names from --list)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "adapt"), help="report stem; cells under <out>/cells/")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--list", action="store_true", help="list the cells and whether each is done")
    p.add_argument("--plan", action="store_true", help="print the predicted seconds per cell and in all")
    p.add_argument("--conclusion", help="the sentence on what the grid shows (kept in the report)")
    p.add_argument("--smoke", action="store_true", help="tiny grid into a temp dir (RTN bases, 3 steps, 3 test examples)")
    p.add_argument("--measure", help="methods whose per-unit costs to time (3 steps; floors dense/sketch-g4: eval at 2 and 10)")
    p.add_argument("--worker"), p.add_argument("--job")
    a = p.parse_args()
    if a.worker:
        job = json.loads(Path(a.job).read_text())
        if "measure" in job:
            res = measure_cell(a.worker, Settings(**job["settings"]), job["bases"], *job["measure"])
        else:
            res = run_cell(a.worker, Settings(**job["settings"]), job["bases"], job["lr"], job["lr_sweep"])
        Path(job["result"]).write_text(json.dumps(res))
        return
    if a.smoke:
        a.steps, a.sweep_steps, a.batch, a.micro, a.val_n, a.test_limit, a.max_new_tokens = 3, 2, 2, 2, 4, 3, 8
        a.rtn_bases, a.out = True, a.out if a.out != p.get_default("out") else tempfile.mkdtemp(prefix="bench-adapt-smoke-") + "/adapt"
    s = Settings(steps=a.steps, sweep_steps=a.sweep_steps, batch=a.batch, micro=a.micro, seq_len=a.seq_len, warmup=a.warmup,
                 val_n=a.val_n, test_limit=a.test_limit, max_new_tokens=a.max_new_tokens, eval_batch=a.eval_batch,
                 seeds=a.seeds, threads=a.threads, bases="rtn" if a.rtn_bases else "calibrated",
                 data_dir=str(bf.data_root()), methods=a.methods.split(","))
    out = Path(a.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    grid = cells(s)
    if a.list or a.plan:
        plan = predict(s)
        for c in grid:
            print(f"{c:32s} {'done' if done(out, c, s) else '-':5s} ~{plan['cells'][c]} s")
        print(f"predicted: {plan['total_s']} s in all ({plan['bases_s']} s sketch bases, {plan['eval_per_cell_s']} s eval per scored cell)")
        return
    if a.measure:
        tmp = Path(tempfile.mkdtemp(prefix="bench-adapt-measure-"))
        bases, runs = sketch_bases(s, tmp, a.measure.split(",")), []
        for name in a.measure.split(","):
            job = tmp / f"{name}.job.json"
            eval_limits = (2, 10) if name in ("floor-dense", "floor-sketch-g4") else (0, 0)
            job.write_text(json.dumps({"settings": asdict(s), "bases": bases, "measure": [3, eval_limits],
                                       "result": str(tmp / f"{name}.json")}))
            subprocess.run([sys.executable, __file__, "--worker", name, "--job", str(job)], check=True,
                           env=dict(os.environ, OMP_NUM_THREADS=str(s.threads)))
            runs.append(json.loads((tmp / f"{name}.json").read_text()))
            print(json.dumps(runs[-1]), flush=True)
        return
    if a.report_only:
        print(markdown(write_report(out, s, a.conclusion)))
        return
    from sketchtune_cli.evaluate import registry

    registry.check_data(registry.select([t for t, _ in test_specs(s)], True).paper, s.data_dir)  # fail before training
    todo = cells_to_run(a.cells, grid, lambda c: done(out, c, s))
    if any(parse_cell(c)[0].base == "nf4" for c in todo):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise SystemExit("QLoRA/NF4 cells need bitsandbytes >= 0.50 (its NF4 runs on the CPU): "
                             "pip install 'bitsandbytes>=0.50' (the bench extra), or leave them out with --methods")
    tmp = Path(tempfile.mkdtemp(prefix="bench-adapt-"))
    bases = sketch_bases(s, tmp, todo)
    plan, t_start, spent, predicted = predict(s), time.perf_counter(), 0.0, 0
    commit = git_commit()
    for i, c in enumerate(todo):
        method, kind, _, _ = parse_cell(c)
        lr, sweep = chosen_lr(out, method) if kind == "train" else (None, {})
        job = tmp / f"{c}.job.json"
        result = tmp / f"{c}.result.json"
        job.write_text(json.dumps({"settings": asdict(s), "bases": bases, "lr": lr, "lr_sweep": sweep, "result": str(result)}))
        scale = spent / predicted if predicted else 1.0  # how far this machine runs from SIZING so far
        left = scale * sum(plan["cells"][x] for x in todo[i:])
        print(f"== cell {i + 1}/{len(todo)} {c}{f' (lr {lr:.0e})' if lr else ''}; {time.perf_counter() - t_start:.0f} s so far, "
              f"ETA ~{left:.0f} s (SIZING x {scale:.2f} as measured so far)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--worker", c, "--job", str(job)], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(s.threads)))
        r = json.loads(result.read_text())
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        r["commit"] = commit
        spent += r["wall_s"]
        predicted += plan["cells"][c]
        write_cell(out, c, r)
        write_report(out, s, a.conclusion)
    print(markdown(write_report(out, s, a.conclusion)))


if __name__ == "__main__":
    main()
