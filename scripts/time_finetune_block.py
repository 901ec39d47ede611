"""Times a fine-tuning step on real-shaped synthetic decoder blocks (default: Llama-3-8B's, 4096 hidden,
14336 intermediate, 32 heads / 8 KV heads) for each way of adapting them, at matched trainable counts:

- ``sketch-g4`` / ``sketch-g1``: every linear of every block a 4-bit SketchedLinear (random codes and LUTs:
  the time is real, the values are not), only the LUTs trainable (fp32), the rest frozen bf16;
  ``sketch-g4-tiled``: the same with the LUT gradient binned tile by tile in Triton instead of from a
  ``grad_W`` formed by one GEMM (``SketchedLinear.materialize_lut_grad = False``, the default until 2026-12-04);
- ``lora-r<N>``: PEFT LoRA on all seven linears of the dense bf16 blocks, rank matched to each sketch's
  trainable count (r (rows + cols) = rows * G * 2^bits, summed over the block's linears);
- ``full``: every weight trainable (bf16 weights and AdamW state: the cheapest full fine-tuning there is).

Every method: the same random token batch, bf16 autocast (what `sketchtune finetune` uses on CUDA), a
next-token loss, backward, AdamW step. Reports milliseconds per step (median after warm-up), tokens/s,
peak device memory and trainable parameters, with ratios to the LoRA of the same trainable count.

    python scripts/time_finetune_block.py                                   # on a GPU
    python scripts/time_finetune_block.py --hidden 256 --intermediate 512 --heads 4 --kv-heads 2 \\
        --seq-len 64 --batch 1 --steps 2 --device cpu                       # a smoke run anywhere

Writes JSON (``--out``, default benchmarks/finetune_block.json) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from sketchtune_cli.sketch.convert import add_empty_sketches, sketched_layers  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_cells import write_json_report  # noqa: E402
from report_gpu import finetune_section  # noqa: E402
from synthetic_llama import add_shape_args, matched_lora_rank, synthetic_llama  # noqa: E402

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(p, blocks=2)
    p.add_argument("--vocab", type=int, default=1024, help="small on purpose: the blocks are what is timed")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--methods", default="sketch-g4,sketch-g4-tiled,lora-g4,sketch-g1,lora-g1,full")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "finetune_block.json"))
    return p.parse_args(argv)


def build(method: str, a, device) -> tuple[torch.nn.Module, list[torch.nn.Parameter], str]:
    model = synthetic_llama(a, vocab=a.vocab, max_positions=a.seq_len, dtype=torch.bfloat16, device=device)
    names = [f"model.layers.{b}.{lin}" for b in range(a.blocks) for lin in LINEARS]
    if method == "full":
        return model, list(model.parameters()), "every weight"
    groups = int(method.split("-g", 1)[1].split("-")[0])
    model.requires_grad_(False)
    if method.startswith("sketch"):
        add_empty_sketches(model, names, a.bits, groups, dtype=torch.float32, device=device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        for layer in sketched_layers(model).values():
            layer.materialize_lut_grad = not method.endswith("-tiled")
            layer.codes.copy_(torch.randint(0, 256, layer.codes.shape, generator=gen, dtype=torch.uint8))
            layer.lut.data.copy_(torch.randn(layer.lut.shape, generator=gen) * 0.02)
            layer.lut.requires_grad_(True)
        what = f"LUTs, G={groups}" + (", tiled LUT gradient" if method.endswith("-tiled") else "")
        return model, [layer.lut for layer in sketched_layers(model).values()], what
    from peft import LoraConfig, get_peft_model

    rank = matched_lora_rank(a, groups)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LINEARS))
    return model, [p for p in model.parameters() if p.requires_grad], f"LoRA r={rank} (matches G={groups})"


def time_method(method: str, a, device, ids: torch.Tensor) -> dict:
    cuda = device.type == "cuda"
    model, params, what = build(method, a, device)
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # .item() synchronises: the step is over when it returns

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    losses = [step() for _ in range(3)]
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    ms = sorted(times)[len(times) // 2] * 1e3
    return {"method": method, "trainable": what, "trainable_params": sum(p.numel() for p in params),
            "ms_per_step": ms, "tokens_per_s": ids.numel() / (ms / 1e3),
            "peak_device_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
            "loss_first_last": [losses[0], losses[-1]]}


def main(argv=None) -> int:
    a = parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    ids = torch.randint(0, a.vocab, (a.batch, a.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    for method in a.methods.split(","):
        rows.append(time_method(method, a, device, ids))
        r = rows[-1]
        print(f"{method}: {r['ms_per_step']:.1f} ms/step, {r['trainable_params'] / 1e6:.2f} M trainable", file=sys.stderr,
              flush=True)
    by_name = {r["method"]: r for r in rows}
    for r in rows:  # each sketch against the LoRA of its trainable count
        peer = by_name.get(r["method"].replace("sketch", "lora").removesuffix("-tiled"))
        if r["method"].startswith("sketch") and peer:
            r["vs_matched_lora"] = {"step_time": r["ms_per_step"] / peer["ms_per_step"],
                                    "peak_memory": (r["peak_device_memory_gib"] / peer["peak_device_memory_gib"]
                                                    if r["peak_device_memory_gib"] else None)}
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__,
              "shape": {"hidden": a.hidden, "intermediate": a.intermediate, "heads": a.heads, "kv_heads": a.kv_heads,
                        "blocks": a.blocks, "vocab": a.vocab},
              "batch": a.batch, "seq_len": a.seq_len, "bits": a.bits, "timed_steps": a.steps, "methods": rows}
    print("\n" + "\n".join(finetune_section(report)), file=sys.stderr)
    write_json_report(a.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
