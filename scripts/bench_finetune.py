"""Fine-tuning benchmark on the embedded SmolLM2-135M: SketchTune (G=1, G=4) vs PEFT LoRA on the dense
base vs QLoRA-style LoRA on an HQQ 4-bit base (bitsandbytes does not run on CPU), in one run.

Every method trains with the same data, batch, sequence length, steps, loss (response tokens only) and
AdamW + linear schedule; each runs in its own subprocess so peak RSS (getrusage) is per method. Reports
step time, tokens/s, peak RSS (training, measured before any accuracy eval), trainable params, base-model
bytes (in memory, and as stored with dense tensors in bf16), and the quality after that budget: held-out
loss before/after, and accuracy before/after on a slice of the paper-protocol tasks through the eval
stage's own code (``sketchtune_cli.evaluate``: the bundled st_* task YAMLs over the LLM-Adapters test
files, lm-eval's HFLM on the in-memory model; default st_gsm8k greedy, first 20, 128 new tokens, and
st_arc_easy_ll, first 50). Every method is scored with the same tasks, limits and generation settings;
LoRA/QLoRA are scored as trained (PEFT model, adapters not merged) in the training subprocess right after
training, "before" in a separate subprocess (so it does not inflate the training peak RSS). Ratios are
sketch G=4 / LoRA and / QLoRA, accuracies as differences in points.

Sketch bases: by default calibrated with the product's compress stage (``sketchtune compress
smollm2-135m --config demo --bits 4 -g G --calib builtin -n 32 --seq-len 256``, a few minutes per base on
a CPU), cached under benchmarks/.cache/bases/ (git-ignored) in a folder named by the hash of the
resolved model+compress config and of the compress/ + sketch/ sources, so a rerun reuses them until a
setting or that code changes (--rebuild-bases forces a rebuild); --rtn-bases uses data-free
round-to-nearest sketches instead. The report records each sketch row's base and its compress settings.

    python scripts/bench_finetune.py                      # -> benchmarks/finetune.json + .md
    python scripts/bench_finetune.py --sketch-g4 runs/x   # use a given sketch artifact for G=4
    python scripts/bench_finetune.py --rtn-bases          # data-free RTN bases (no compress run)
    python scripts/bench_finetune.py --no-accuracy        # speed/memory/held-out loss only
    python scripts/bench_finetune.py --steps 2 --batch 2 --micro 1 --eval-n 4 --gen-limit 2 \
        --ll-limit 4 --max-new-tokens 16 --rtn-bases --out /tmp/bench_ft_smoke   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache" / "bases"  # git-ignored (.cache/)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- shared set-up -------------------------------------------------------------------------------------

def data_root() -> Path:
    env = os.environ.get("SKETCHTUNE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "llm-adapters"


def data_source() -> str:
    math = data_root() / "train" / "math_data.json"
    return str(math) if math.is_file() else "demo"


def load_examples(args, tokenizer):
    """(train examples, held-out examples): Math10K's last records are held out (demo: its test split)."""
    from sketchtune_cli.finetune.data import read_records, tokenize_records

    n_train = args.steps * args.batch
    if args.data == "demo":
        train, held = read_records("demo", "train", n_train), read_records("demo", "test", args.eval_n)
    else:
        recs = read_records(args.data)
        train, held = recs[:n_train], recs[-args.eval_n:]
    tr, _ = tokenize_records(train, tokenizer, "alpaca", args.seq_len)
    ev, _ = tokenize_records(held, tokenizer, "alpaca", args.seq_len)
    return tr, ev


def rtn_sketch_artifact(out: Path, groups_per_row: int) -> Path:
    """A data-free round-to-nearest sketch (uniform LUT per (row, group)) when no compressed one is given."""
    import torch

    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.models import load_model
    from sketchtune_cli.sketch import Sketch, find_target_linears, replace_with_sketches, save_sketch

    model, tok = load_model("smollm2-135m", dtype="float32")
    sketches = {}
    for name, lin in find_target_linears(model).items():
        w = lin.weight.detach().float().reshape(lin.out_features, groups_per_row, -1)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-8) / 15
        codes = ((w - lo) / scale).round().clamp(0, 15).to(torch.uint8)
        sketches[name] = Sketch(lo + scale * torch.arange(16.0), codes, 4)
    replace_with_sketches(model, sketches)
    with write_artifact(out, "sketch", {"bench": f"rtn G={groups_per_row}"}, overwrite=True) as w:
        save_sketch(model, tok, w.path)
    return out


def compress_code_hash() -> str:
    """Hash of the code a sketch depends on (compress/ and sketch/ sources): a cached base is rebuilt when it
    changes, not only when a setting does."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([*(REPO / "sketchtune_cli" / "compress").glob("*.py"), *(REPO / "sketchtune_cli" / "sketch").glob("*.py")]):
        h.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:8]


def calibrated_base(args, groups_per_row: int) -> tuple[Path, dict]:
    """A sketch from the product's compress stage (demo config, bits 4, ``groups_per_row``, the given
    calibration), cached per resolved model+compress config: (artifact path, what the report records)."""
    from sketchtune_cli.artifacts import read_manifest
    from sketchtune_cli.compress.stage import resume_hash
    from sketchtune_cli.config import load_config
    from sketchtune_cli.errors import UserError

    values = {"model.name": "smollm2-135m", "compress.bits": 4, "compress.groups_per_row": groups_per_row,
              "compress.calib": args.calib, "compress.num_samples": args.calib_samples,
              "compress.seq_len": args.calib_seq_len, "compress.device": "cpu"}
    config = load_config("demo", [], values).section_dict("model", "compress")
    key = resume_hash(config)  # what the compress stage itself compares on --resume (device etc. left out)
    code = compress_code_hash()
    out = CACHE / f"smollm2-135m-b4g{groups_per_row}-{key}-{code}"
    info = {"kind": "calibrated", "path": str(out), "config_hash": key, "code_hash": code, "compress": config["compress"]}
    if out.exists() and not args.rebuild_bases:
        try:
            manifest = read_manifest(out, "sketch")
            if resume_hash(manifest.config) == key:
                return out, {**info, "cached": True, "build_s": manifest.results.get("wall_seconds")}
        except UserError as e:
            print(f"cached base {out} unusable ({e}); rebuilding", file=sys.stderr)
    cmd = [sys.executable, "-m", "sketchtune_cli", "compress", "smollm2-135m", "--config", "demo", "--bits", "4",
           "-g", str(groups_per_row), "--calib", args.calib, "-n", str(args.calib_samples), "--seq-len",
           str(args.calib_seq_len), "--device", "cpu", "-o", str(out), "--overwrite"]
    print(f"== compress G={groups_per_row}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
                   stdout=subprocess.DEVNULL)
    return out, {**info, "cached": False, "build_s": round(time.perf_counter() - t0, 1)}


def given_base(path: str) -> dict:
    """What the report records about a sketch artifact passed with --sketch-g1/--sketch-g4."""
    from sketchtune_cli.artifacts import read_manifest

    manifest = read_manifest(path, "sketch", verify=False)
    return {"kind": "given", "path": str(Path(path).resolve()), "compress": manifest.config.get("compress")}


def describe_base(info: dict) -> str:
    if info["kind"] == "rtn":
        return f"RTN (data-free, uniform LUT per row group), b4 G={info['groups_per_row']}"
    c = info.get("compress") or {}
    how = (f"compress {c.get('calib')} {c.get('num_samples')}x{c.get('seq_len')}, b{c.get('bits')} "
           f"G={c.get('groups_per_row')}, kmeans_iters {c.get('kmeans_iters')}, "
           f"lut_refit_rounds {c.get('lut_refit_rounds', '-')}, lut {c.get('lut_dtype')}") if c else "no compress config"
    if info["kind"] == "given":
        return f"given {info['path']} ({how})"
    built = f"code {info['code_hash']}, " + ("cached" if info.get("cached") else "built")
    secs = f", {info['build_s']:.0f} s to build" if isinstance(info.get("build_s"), (int, float)) else ""
    return f"calibrated ({how}; {built}{secs})"


# ---- accuracy through the eval stage's code ----------------------------------------------------------

def eval_specs(args) -> list[tuple[str, int]]:
    """(task, limit) pairs; a task or limit of 0/empty is skipped."""
    return [(t, n) for t, n in ((args.gen_task, args.gen_limit), (args.ll_task, args.ll_limit)) if t and n > 0]


def accuracy(model, tok, args, specs: list[tuple[str, int]] | None = None, top_share: dict | None = None) -> tuple[dict, dict]:
    """({task: accuracy %}, {task: seconds}) of the model as it is now, through ``sketchtune_cli.evaluate``
    (the pieces ``sketchtune eval`` uses: registry, task YAMLs, HFLM on the model object, lm-eval). ``specs``:
    (task, limit) pairs, default ``eval_specs(args)``; uses args.method, eval_data_dir, max_new_tokens,
    eval_batch. ``top_share``: when given, filled with {task: % of examples given the most common answer}
    (a model that learned only the format answers one label everywhere: its score is that label's share)."""
    import torch

    from sketchtune_cli.evaluate import registry, report, runner, taskgen

    model.eval()
    scores, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-ft-tasks-") as tmp:
        specs = eval_specs(args) if specs is None else specs
        sel = registry.select([t for t, _ in specs], have_data_dir=True)
        registry.check_data(sel.paper, args.eval_data_dir)
        taskgen.write_task_dir(Path(tmp), sel.paper, [], args.eval_data_dir, args.max_new_tokens)
        task_manager = runner.make_task_manager(tmp, sel.harness)
        lm = runner.make_lm(model, tok, args.eval_batch)
        for task, name in zip(sel.requested, (t for t, _ in specs)):
            limit = dict(specs)[name]
            t0 = time.perf_counter()
            with torch.no_grad():
                res = runner.run_lm_eval(lm, [task], task_manager, runner.RunOptions(
                    limit=limit, batch_size=args.eval_batch, log_samples=top_share is not None))
            seconds[task] = round(time.perf_counter() - t0, 1)
            scores.update(report.scores_of(args.method, res).scores)
            if top_share is not None:
                top_share[task] = most_common_answer_share(res["samples"][task])
            print(f"[{args.method}] {task} (first {limit}): {scores.get(task)} % in {seconds[task]} s", file=sys.stderr, flush=True)
    return scores, seconds


def most_common_answer_share(samples: list[dict]) -> float:
    """% of lm-eval samples whose prediction is the most common one: the filtered generation, or for a
    multiple-choice (log-likelihood) sample the index of the most likely option."""
    from collections import Counter

    def prediction(sample: dict):
        resp = sample["filtered_resps"]
        if resp and isinstance(resp[0], (list, tuple)):  # per option: (log-likelihood, is_greedy)
            return max(range(len(resp)), key=lambda i: resp[i][0])
        return str(resp[0] if isinstance(resp, list) and resp else resp).strip()

    counts = Counter(prediction(x) for x in samples)
    return round(100.0 * max(counts.values()) / len(samples), 1) if samples else 0.0


# ---- models per method ---------------------------------------------------------------------------------

def sketch_model(path: str):
    from sketchtune_cli.training.trainer import trainable_luts
    from sketchtune_cli.loading import load_sketch_artifact

    import torch

    from sketchtune_cli.sketch import SketchedLinear

    model, tok, _ = load_sketch_artifact(path, dtype=torch.float32)
    for m in model.modules():  # no W_hat kept after the held-out evals: peak RSS is the training's, as for LoRA
        if isinstance(m, SketchedLinear):
            m.cache_dense_on_cpu = False
    return model, tok, list(trainable_luts(model).values())


def lora_rank_matching(groups_per_row: int = 4, bits: int = 4) -> int:
    """LoRA rank whose trainable count matches the sketch's: r (rows + cols) vs rows * G * 2^bits."""
    from sketchtune_cli.models import load_model_config
    from synthetic_llama import matched_lora_rank

    cfg = load_model_config("smollm2-135m")
    shape = argparse.Namespace(hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, bits=bits,
                               heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads)
    return matched_lora_rank(shape, groups_per_row)


def hqq_quantize(model, group_size: int = 64):
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    from sketchtune_cli.sketch import find_target_linears

    cfg = BaseQuantizeConfig(nbits=4, group_size=group_size)
    # HQQ's optimizer costs ~3 s per layer on this CPU; plain min-max rounding is what bnb-style QLoRA uses.
    cfg["weight_quant_params"]["optimize"] = False
    for name, lin in find_target_linears(model).items():
        parent, _, child = name.rpartition(".")
        q = HQQLinear(lin, cfg, compute_dtype=torch.float32, device="cpu")
        setattr(model.get_submodule(parent), child, q)
    return model


def lora_model(rank: int, quantized: bool):
    from peft import LoraConfig, get_peft_model

    from sketchtune_cli.models import load_model

    model, tok = load_model("smollm2-135m", dtype="float32")
    if quantized:
        model = hqq_quantize(model)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    return model, tok, [p for p in model.parameters() if p.requires_grad]


def base_bytes(model, trainable) -> tuple[int, int]:
    """(bytes of the frozen base as held in memory, as stored with every float tensor in bf16)."""
    import torch

    ids = {id(p) for p in trainable}
    mem = bf16 = 0
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in ids or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        mem += t.numel() * t.element_size()
        bf16 += t.numel() * (2 if t.is_floating_point() else t.element_size())
    for m in model.modules():  # HQQ keeps its packed weights and metadata outside parameters/buffers
        if type(m).__name__ == "HQQLinear":
            wq = m.W_q
            mem += wq.numel() * wq.element_size()
            bf16 += wq.numel() * wq.element_size()
            for v in m.meta.values():
                if isinstance(v, torch.Tensor):
                    mem += v.numel() * v.element_size()
                    bf16 += v.numel() * 2
    return mem, bf16


# ---- one method (worker subprocess) --------------------------------------------------------------------

def build(args):
    """(model, tokenizer, trainable parameters, lr) of ``args.method``, seeded alike for eval-only and training."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.method.startswith("sketch"):
        return (*sketch_model(args.sketch), args.lr_sketch)
    return (*lora_model(args.rank, quantized=args.method == "qlora"), args.lr_lora)


def eval_worker(args) -> dict:
    """Accuracy of a method's model before training (its own subprocess: not counted in training RSS)."""
    model, tok, _, _ = build(args)
    scores, seconds = accuracy(model, tok, args)
    return {"accuracy_before": scores, "eval_seconds_before": seconds}


def mean_token_loss(model, examples, pad: int, micro: int) -> float:
    """Mean loss per response token over ``examples`` (micro-batches of ``micro``), no gradients; leaves the
    model in train mode."""
    import torch

    from sketchtune_cli.training.batches import collate
    from sketchtune_cli.training.trainer import aligned_loss_sum, forward_targets

    model.eval()
    tot = n = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), micro):
            b = collate(examples[i:i + micro], pad)
            logits, b = forward_targets(model, b)
            tot += aligned_loss_sum(logits, b["targets"]).item()
            n += int((b["labels"][:, 1:] != -100).sum())
    model.train()
    return tot / n


def train_steps(model, params, opt, sched, train, pad, args, prof=None, on_step=None) -> tuple[list, list, list]:
    """args.steps optimizer steps of args.batch examples (micro-batches of args.micro; loss = mean over the
    batch's response tokens), clip 1.0: (seconds, tokens, loss) per step. ``prof`` (a torch profiler) wraps the
    next-to-last step; ``on_step(step, loss)`` is called after each step (step counts from 1)."""
    import torch

    from sketchtune_cli.training.batches import collate
    from sketchtune_cli.training.trainer import aligned_loss_sum, forward_targets

    model.train()
    times, tokens, losses = [], [], []
    for step in range(args.steps):
        batch = train[step * args.batch:(step + 1) * args.batch]
        micro = [collate(batch[i:i + args.micro], pad) for i in range(0, len(batch), args.micro)]
        n_tgt = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        if prof is not None and step == args.steps - 2:
            prof.__enter__()
        t0 = time.perf_counter()
        total = 0.0
        for b in micro:
            logits, b = forward_targets(model, b)  # the trainer's own forward and loss
            loss = aligned_loss_sum(logits, b["targets"])
            (loss / n_tgt).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if prof is not None and step == args.steps - 2:
            prof.__exit__(None, None, None)
        tokens.append(sum(int(b["attention_mask"].sum()) for b in micro))
        losses.append(total / n_tgt)
        print(f"[{args.method}] step {step + 1}/{args.steps} loss {losses[-1]:.4f} {times[-1]:.2f}s", file=sys.stderr, flush=True)
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return times, tokens, losses


def worker(args) -> dict:
    import torch

    model, tok, params, lr = build(args)
    mem_bytes, bf16_bytes = base_bytes(model, params)
    train, held = load_examples(args, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=False)
    from transformers import get_scheduler

    sched = get_scheduler("linear", opt, num_warmup_steps=args.warmup, num_training_steps=args.steps)

    def held_out_loss() -> float:
        return mean_token_loss(model, held, pad, args.micro)

    before = held_out_loss()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prof = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
    times, tokens, losses = train_steps(model, params, opt, sched, train, pad, args, prof)
    after = held_out_loss()
    steady = slice(1, None) if args.steps > 2 else slice(None)  # the first step pays one-time costs
    step_time = sum(times[steady]) / len(times[steady])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # training only: the eval below comes after
    out = {
        "method": args.method, "lr": lr, "trainable_params": sum(p.numel() for p in params),
        "base_bytes_in_memory": mem_bytes, "base_bytes_bf16": bf16_bytes,
        "step_time_s": round(step_time, 4), "tokens_per_s": round(sum(tokens[steady]) / sum(times[steady]), 1),
        "peak_rss_mb": round(peak_rss / 1024, 1),
        "rss_after_load_mb": round(rss_after_load / 1024, 1),
        "train_loss_first": round(losses[0], 4), "train_loss_last": round(losses[-1], 4),
        "held_out_loss_before": round(before, 4), "held_out_loss_after": round(after, 4),
    }
    if prof is not None:
        out["profile_top"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    if args.accuracy:
        out["accuracy_after"], out["eval_seconds_after"] = accuracy(model, tok, args)
    return out


# ---- driver --------------------------------------------------------------------------------------------

def run_method(args, method: str, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, __file__, "--worker", method, "--result", result_path, *common_args(args), *extra]
    print(f"== {method}{' (accuracy before training)' if '--eval-only' in extra else ''}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    out = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    return out


def common_args(args) -> list[str]:
    return ["--steps", str(args.steps), "--batch", str(args.batch), "--micro", str(args.micro), "--seq-len",
            str(args.seq_len), "--data", args.data, "--eval-n", str(args.eval_n), "--threads", str(args.threads),
            "--lr-sketch", str(args.lr_sketch), "--lr-lora", str(args.lr_lora), "--warmup", str(args.warmup),
            "--gen-task", args.gen_task, "--gen-limit", str(args.gen_limit), "--max-new-tokens", str(args.max_new_tokens),
            "--ll-task", args.ll_task, "--ll-limit", str(args.ll_limit), "--eval-batch", str(args.eval_batch),
            "--eval-data-dir", args.eval_data_dir, *([] if args.accuracy else ["--no-accuracy"])]


def _acc_cell(r: dict, task: str) -> str:
    before, after = r.get("accuracy_before", {}).get(task), r.get("accuracy_after", {}).get(task)
    if before is None and after is None:
        return "-"
    fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    return f"{fmt(before)} -> {fmt(after)}"


def _eval_seconds(r: dict, key: str) -> str:
    sec = r.get(key)
    return f"{sum(sec.values()):.0f}" if sec else "-"


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = [
        "# Fine-tuning benchmark (CPU, embedded SmolLM2-135M)", "",
        f"Data: {s['data']}; {s['steps']} steps x batch {s['batch']} (micro {s['micro']}), max {s['seq_len']} tokens, "
        f"{s['threads']} threads; held-out: {s['eval_n']} records. LR sketch {s['lr_sketch']}, LoRA {s['lr_lora']}. "
        f"QLoRA = PEFT LoRA on HQQ 4-bit (group 64) linears "
        f"(round-to-nearest, HQQ optimizer off; bitsandbytes is not installed/has no CPU path). LoRA rank {s['lora_rank']} matches G=4's trainable count. "
        "Shared, noisy 2-core machine: compare ratios, not absolute times.", "",
        "Sketch bases:", "",
    ]
    lines += [f"- {m}: {describe_base(info)}" for m, info in s["sketch_bases"].items()]
    lines += [
        "", "| method | trainable | base MB (bf16 storage) | step s | tok/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["methods"]:
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['base_bytes_bf16'] / 1e6:.1f} | {r['step_time_s']:.3f} | "
                     f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    tasks = [t for t, _ in s["accuracy"]["tasks"]] if s.get("accuracy") else []
    a = s.get("accuracy")
    lines += ["", "Quality after the same budget (before -> after training):", ""]
    if a:
        limits = ", ".join(f"{t} first {n}" for t, n in a["tasks"])
        lines += [f"Accuracy (%) through the eval stage's code (bundled paper-protocol tasks, lm-eval HFLM on the "
                  f"in-memory model, batch {a['batch_size']}): {limits}; generation greedy, max {a['max_new_tokens']} "
                  f"new tokens; data {a['data_dir']}. LoRA/QLoRA scored as PEFT models (adapters not merged). "
                  "Small slices: one example is "
                  + ", ".join(f"{100 / n:.1f} pts on {t}" for t, n in a["tasks"]) + ".", ""]
    head = "| method | held-out loss | " + " | ".join(f"{t} acc %" for t in tasks) + (" | eval s (before, after) |" if tasks else "")
    lines += [head, "|---|---|" + "---|" * len(tasks) + ("---:|" if tasks else "")]
    for r in report["methods"]:
        row = f"| {r['method']} | {r['held_out_loss_before']:.4f} -> {r['held_out_loss_after']:.4f} |"
        if tasks:
            row += "".join(f" {_acc_cell(r, t)} |" for t in tasks)
            row += f" {_eval_seconds(r, 'eval_seconds_before')}, {_eval_seconds(r, 'eval_seconds_after')} |"
        lines.append(row)
    lines += ["", "Ratios (sketch G=4 / other; accuracy and held-out loss after training: G=4 minus other):", ""]
    for k, v in report["ratios"].items():
        lines.append(f"- {k}: " + ", ".join(
            f"{m} {x:+.2f}" if m.endswith("(pts)") or m.startswith("held_out") else f"{m} {x:.2f}" for m, x in v.items()))
    if report.get("profile"):
        lines += ["", "Where the sketch's step time goes (torch profiler, one step, self CPU time):", "", "```",
                  report["profile"], "```"]
    return "\n".join(lines) + "\n"


def ratios(methods: dict) -> dict:
    g4 = methods.get("sketch-g4")
    out = {}
    for other in ("lora", "qlora"):
        if g4 and other in methods:
            o = methods[other]
            r = {
                "step_time": g4["step_time_s"] / o["step_time_s"],
                "tokens_per_s": g4["tokens_per_s"] / o["tokens_per_s"],
                "peak_rss": g4["peak_rss_mb"] / o["peak_rss_mb"],
                "base_bytes_bf16": g4["base_bytes_bf16"] / o["base_bytes_bf16"],
                "trainable": g4["trainable_params"] / o["trainable_params"],
                "held_out_loss_after (diff)": g4["held_out_loss_after"] - o["held_out_loss_after"],
            }
            for task, acc in g4.get("accuracy_after", {}).items():
                if task in o.get("accuracy_after", {}):
                    r[f"{task} acc (pts)"] = acc - o["accuracy_after"][task]
            out[f"sketch-g4 / {other}"] = r
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-n", type=int, default=24, help="held-out records for the loss")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr-sketch", type=float, default=1e-4)
    p.add_argument("--lr-lora", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data", default=None, help="default: Math10K if present, else demo")
    p.add_argument("--methods", default="sketch-g1,sketch-g4,lora,qlora")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "finetune"))
    p.add_argument("--no-profile", action="store_true")
    b = p.add_argument_group("sketch bases")
    b.add_argument("--sketch-g1", help="sketch artifact (G=1) to use instead of building one")
    b.add_argument("--sketch-g4", help="sketch artifact (G=4) to use instead of building one")
    b.add_argument("--calibrate", dest="calibrate", action="store_true", default=True,
                   help="build bases with `sketchtune compress` (demo config, bits 4), cached (default)")
    b.add_argument("--rtn-bases", dest="calibrate", action="store_false",
                   help="build data-free round-to-nearest bases instead (seconds, no compress run)")
    b.add_argument("--calib", default="builtin", help="compress --calib for calibrated bases")
    b.add_argument("--calib-samples", type=int, default=32, help="compress --num-samples")
    b.add_argument("--calib-seq-len", type=int, default=256, help="compress --seq-len")
    b.add_argument("--rebuild-bases", action="store_true", help="re-run compress even if a cached base matches")
    e = p.add_argument_group("accuracy (eval stage code, same settings for every method)")
    e.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip accuracy (before and after)")
    e.add_argument("--no-accuracy-before", dest="accuracy_before", action="store_false",
                   help="skip the before-training accuracy (one extra subprocess per method)")
    e.add_argument("--gen-task", default="st_gsm8k", help="generation task ('' to skip)")
    e.add_argument("--gen-limit", type=int, default=20, help="first N examples of --gen-task")
    e.add_argument("--max-new-tokens", type=int, default=128, help="greedy generation length of --gen-task")
    e.add_argument("--ll-task", default="st_arc_easy_ll", help="log-likelihood task ('' to skip)")
    e.add_argument("--ll-limit", type=int, default=50, help="first N examples of --ll-task")
    e.add_argument("--eval-batch", type=int, default=10, help="lm-eval batch size")
    e.add_argument("--eval-data-dir", default=None, help="LLM-Adapters test files (default: $SKETCHTUNE_DATA or "
                   "../shared/data/llm-adapters)")
    # worker-only
    p.add_argument("--worker"), p.add_argument("--result"), p.add_argument("--sketch"), p.add_argument("--rank", type=int)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--eval-only", action="store_true")
    args = p.parse_args()
    args.data = args.data or data_source()
    args.eval_data_dir = args.eval_data_dir or str(data_root())
    if not eval_specs(args):
        args.accuracy = False
    if args.worker:
        args.method = args.worker
        Path(args.result).write_text(json.dumps(eval_worker(args) if args.eval_only else worker(args)))
        return
    if args.accuracy:  # fail before any training when a test file is missing
        from sketchtune_cli.evaluate import registry

        sel = registry.select([t for t, _ in eval_specs(args)], have_data_dir=True)
        registry.check_data(sel.paper, args.eval_data_dir)
        # the names lm-eval reports (gsm8k -> st_gsm8k), so table columns and scores agree
        args.gen_task = registry.select([args.gen_task], True).requested[0] if args.gen_task else ""
        args.ll_task = registry.select([args.ll_task], True).requested[0] if args.ll_task else ""
    rank = lora_rank_matching(4)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    methods = args.methods.split(",")
    given = {"sketch-g1": args.sketch_g1, "sketch-g4": args.sketch_g4}
    paths, bases = {}, {}
    for method in (m for m in methods if m.startswith("sketch")):  # bases first: a failed compress costs no training
        groups = 1 if method == "sketch-g1" else 4
        if given[method]:
            paths[method], bases[method] = given[method], given_base(given[method])
        elif args.calibrate:
            path, bases[method] = calibrated_base(args, groups)
            paths[method] = str(path)
        else:
            paths[method] = str(rtn_sketch_artifact(tmp / method, groups))
            bases[method] = {"kind": "rtn", "groups_per_row": groups, "bits": 4}
    results = {}
    for method in methods:
        extra = []
        if method.startswith("sketch"):
            extra = ["--sketch", paths[method]] + ([] if args.no_profile or method != "sketch-g4" else ["--profile"])
        else:
            extra = ["--rank", str(rank)]
        before = run_method(args, method, extra + ["--eval-only"]) if args.accuracy and args.accuracy_before else {}
        results[method] = {**run_method(args, method, extra), **before}
        if method in bases:
            results[method]["sketch_base"] = describe_base(bases[method])
        write_report(args, rank, bases, results)  # after each method: a partial run still leaves numbers
    print(markdown(write_report(args, rank, bases, results)))
    shutil.rmtree(tmp, ignore_errors=True)  # RTN bases (calibrated ones stay in the cache)


def write_report(args, rank: int, bases: dict, results: dict) -> dict:
    profile = results.get("sketch-g4", {}).get("profile_top")
    methods = [{k: v for k, v in r.items() if k != "profile_top"} for r in results.values()]
    accuracy_setup = {"tasks": eval_specs(args), "max_new_tokens": args.max_new_tokens, "batch_size": args.eval_batch,
                      "data_dir": args.eval_data_dir, "before": args.accuracy_before,
                      "generation": "greedy (do_sample false), until '### Instruction:'",
                      "lora_scored_as": "PEFT model, adapters not merged"} if args.accuracy else None
    report = {
        "setup": {"model": "smollm2-135m", "data": args.data, "steps": args.steps, "batch": args.batch, "micro": args.micro,
                  "seq_len": args.seq_len, "eval_n": args.eval_n, "threads": args.threads, "lr_sketch": args.lr_sketch,
                  "lr_lora": args.lr_lora, "lora_rank": rank, "sketch_bases": bases, "accuracy": accuracy_setup},
        "methods": methods,
        "ratios": ratios(results),
        "profile": profile,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
