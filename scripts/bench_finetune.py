"""Fine-tuning benchmark on the embedded SmolLM2-135M: SketchTune (G=1, G=4) vs PEFT LoRA on the dense
base vs QLoRA-style LoRA on an HQQ 4-bit base (bitsandbytes does not run on CPU), in one run.

Every method trains with the same data, batch, sequence length, steps, loss (response tokens only) and
AdamW + linear schedule; each runs in its own subprocess so peak RSS (getrusage) is per method. Reports
step time, tokens/s, peak RSS, trainable params, base-model bytes (in memory, and as stored with dense
tensors in bf16), held-out loss before/after, and ratios sketch/LoRA and sketch/QLoRA.

    python scripts/bench_finetune.py                      # -> benchmarks/finetune.json + .md
    python scripts/bench_finetune.py --sketch-g4 runs/x   # use a compressed sketch instead of RTN
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- shared set-up -------------------------------------------------------------------------------------

def data_source() -> str:
    env = os.environ.get("SKETCHTUNE_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "llm-adapters"
    math = root / "train" / "math_data.json"
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


# ---- models per method ---------------------------------------------------------------------------------

def sketch_model(path: str):
    from sketchtune_cli.finetune.trainer import trainable_luts
    from sketchtune_cli.loading import load_sketch_artifact

    import torch

    model, tok, _ = load_sketch_artifact(path, dtype=torch.float32)
    return model, tok, list(trainable_luts(model).values())


def lora_rank_matching(groups_per_row: int = 4, bits: int = 4) -> int:
    """LoRA rank whose trainable count matches the sketch's: r (rows + cols) vs rows * G * 2^bits."""
    from sketchtune_cli.models import load_model_config

    cfg = load_model_config("smollm2-135m")
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # (rows, cols)
    sketch = sum(r * groups_per_row * 2**bits for r, _ in shapes)
    return max(1, round(sketch / sum(r + c for r, c in shapes)))


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

def worker(args) -> dict:
    import torch

    from sketchtune_cli.finetune.data import collate
    from sketchtune_cli.finetune.trainer import token_loss_sum

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.method.startswith("sketch"):
        model, tok, params = sketch_model(args.sketch)
        lr = args.lr_sketch
    else:
        model, tok, params = lora_model(args.rank, quantized=args.method == "qlora")
        lr = args.lr_lora
    mem_bytes, bf16_bytes = base_bytes(model, params)
    train, held = load_examples(args, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=False)
    from transformers import get_scheduler

    sched = get_scheduler("linear", opt, num_warmup_steps=args.warmup, num_training_steps=args.steps)

    @torch.no_grad()
    def held_out_loss() -> float:
        model.eval()
        tot = n = 0.0
        for i in range(0, len(held), args.micro):
            b = collate(held[i:i + args.micro], pad)
            tot += token_loss_sum(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]).item()
            n += int((b["labels"][:, 1:] != -100).sum())
        model.train()
        return tot / n

    before = held_out_loss()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.train()
    times, tokens, losses = [], [], []
    prof = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
    for step in range(args.steps):
        batch = train[step * args.batch:(step + 1) * args.batch]
        micro = [collate(batch[i:i + args.micro], pad) for i in range(0, len(batch), args.micro)]
        n_tgt = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        if prof is not None and step == args.steps - 2:
            prof.__enter__()
        t0 = time.perf_counter()
        total = 0.0
        for b in micro:
            loss = token_loss_sum(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
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
    after = held_out_loss()
    steady = slice(1, None) if args.steps > 2 else slice(None)  # the first step pays one-time costs
    step_time = sum(times[steady]) / len(times[steady])
    out = {
        "method": args.method, "lr": lr, "trainable_params": sum(p.numel() for p in params),
        "base_bytes_in_memory": mem_bytes, "base_bytes_bf16": bf16_bytes,
        "step_time_s": round(step_time, 4), "tokens_per_s": round(sum(tokens[steady]) / sum(times[steady]), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_load_mb": round(rss_after_load / 1024, 1),
        "train_loss_first": round(losses[0], 4), "train_loss_last": round(losses[-1], 4),
        "held_out_loss_before": round(before, 4), "held_out_loss_after": round(after, 4),
    }
    if prof is not None:
        out["profile_top"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return out


# ---- driver --------------------------------------------------------------------------------------------

def run_method(args, method: str, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, __file__, "--worker", method, "--result", result_path, *common_args(args), *extra]
    print(f"== {method}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    return json.loads(Path(result_path).read_text())


def common_args(args) -> list[str]:
    return ["--steps", str(args.steps), "--batch", str(args.batch), "--micro", str(args.micro), "--seq-len",
            str(args.seq_len), "--data", args.data, "--eval-n", str(args.eval_n), "--threads", str(args.threads),
            "--lr-sketch", str(args.lr_sketch), "--lr-lora", str(args.lr_lora), "--warmup", str(args.warmup)]


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = [
        "# Fine-tuning benchmark (CPU, embedded SmolLM2-135M)", "",
        f"Data: {s['data']}; {s['steps']} steps x batch {s['batch']} (micro {s['micro']}), max {s['seq_len']} tokens, "
        f"{s['threads']} threads; held-out: {s['eval_n']} records. LR sketch {s['lr_sketch']}, LoRA {s['lr_lora']}. "
        f"Sketch bases: {s['sketch_source']}. QLoRA = PEFT LoRA on HQQ 4-bit (group 64) linears "
        f"(round-to-nearest, HQQ optimizer off; bitsandbytes is not installed/has no CPU path). LoRA rank {s['lora_rank']} matches G=4's trainable count. "
        "Shared, noisy 2-core machine: compare ratios, not absolute times.", "",
        "| method | trainable | base MB (bf16 storage) | step s | tok/s | peak RSS MB | held-out loss before -> after |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["methods"]:
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['base_bytes_bf16'] / 1e6:.1f} | {r['step_time_s']:.3f} | "
                     f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['held_out_loss_before']:.4f} -> {r['held_out_loss_after']:.4f} |")
    lines += ["", "Ratios (sketch G=4 / other):", ""]
    for k, v in report["ratios"].items():
        lines.append(f"- {k}: " + ", ".join(f"{m} {x:.2f}" for m, x in v.items()))
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
            out[f"sketch-g4 / {other}"] = {
                "step_time": g4["step_time_s"] / o["step_time_s"],
                "tokens_per_s": g4["tokens_per_s"] / o["tokens_per_s"],
                "peak_rss": g4["peak_rss_mb"] / o["peak_rss_mb"],
                "base_bytes_bf16": g4["base_bytes_bf16"] / o["base_bytes_bf16"],
                "trainable": g4["trainable_params"] / o["trainable_params"],
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-n", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr-sketch", type=float, default=1e-4)
    p.add_argument("--lr-lora", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data", default=None, help="default: Math10K if present, else demo")
    p.add_argument("--sketch-g1", help="sketch artifact (G=1); default: an RTN sketch built here")
    p.add_argument("--sketch-g4", help="sketch artifact (G=4); default: an RTN sketch built here")
    p.add_argument("--methods", default="sketch-g1,sketch-g4,lora,qlora")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "finetune"))
    p.add_argument("--no-profile", action="store_true")
    # worker-only
    p.add_argument("--worker"), p.add_argument("--result"), p.add_argument("--sketch"), p.add_argument("--rank", type=int)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    args.data = args.data or data_source()
    if args.worker:
        args.method = args.worker
        Path(args.result).write_text(json.dumps(worker(args)))
        return
    rank = lora_rank_matching(4)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    sketches = {"sketch-g1": args.sketch_g1, "sketch-g4": args.sketch_g4}
    source = {k: ("given: " + v if v else "RTN (data-free)") for k, v in sketches.items()}
    results = {}
    for method in args.methods.split(","):
        extra = []
        if method.startswith("sketch"):
            path = sketches[method] or str(rtn_sketch_artifact(tmp / method, 1 if method == "sketch-g1" else 4))
            extra = ["--sketch", path] + ([] if args.no_profile or method != "sketch-g4" else ["--profile"])
        else:
            extra = ["--rank", str(rank)]
        results[method] = run_method(args, method, extra)
        write_report(args, rank, source, results)  # after each method: a partial run still leaves numbers
    print(markdown(write_report(args, rank, source, results)))


def write_report(args, rank: int, source: dict, results: dict) -> dict:
    profile = results.get("sketch-g4", {}).get("profile_top")
    methods = [{k: v for k, v in r.items() if k != "profile_top"} for r in results.values()]
    report = {
        "setup": {"model": "smollm2-135m", "data": args.data, "steps": args.steps, "batch": args.batch, "micro": args.micro,
                  "seq_len": args.seq_len, "eval_n": args.eval_n, "threads": args.threads, "lr_sketch": args.lr_sketch,
                  "lr_lora": args.lr_lora, "lora_rank": rank, "sketch_source": source},
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
