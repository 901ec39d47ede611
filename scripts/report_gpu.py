"""Renders what `scripts/gpu_session.sh` brought back from a GPU machine as one page of tables.

    python scripts/report_gpu.py benchmarks/gpu            # writes benchmarks/gpu/gpu.md

Reads DIR/env.txt, DIR/gpu_check.json, DIR/block_g4.json / block_g1.json and DIR/finetune_block.json (any
that exist). Every
figure comes from those files; the ratios are computed here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DTYPES = ["torch.float32", "torch.bfloat16", "torch.float16"]
KERNELS = ["dequant", "dequant_cast", "matmul", "lut_grad", "lut_grad_from_io", "lut_grad_from_io_materialized"]


def correctness_section(check: dict) -> list[str]:
    c = check["correctness"]
    worst: dict[tuple[str, str], float] = {}
    for case in c["cases"]:
        for kernel, err in case["errors"].items():
            worst[kernel, case["dtype"]] = max(worst.get((kernel, case["dtype"]), 0.0), err)
    lines = [f"{len(c['cases']) - c['failed']}/{len(c['cases'])} cases within tolerance (bits 2/3/4; fp32/bf16/fp16; "
             f"odd shapes, non-contiguous inputs, NaN-filled outputs); LUT gradients bit-for-bit deterministic over "
             f"3 calls on a 4096 x 4096 layer: {c['deterministic']}.", "",
             "| kernel | worst rel. error fp32 | bf16 | fp16 |", "|---|---:|---:|---:|"]
    for k in [k for k in KERNELS if (k, DTYPES[0]) in worst]:  # older runs lack the materialised path
        lines.append(f"| {k} | " + " | ".join(f"{worst[k, d]:.2g}" for d in DTYPES) + " |")
    return lines


def dequant_bytes(rows: int, cols: int, bits: int) -> int:
    """Bytes a dequantise moves: the bf16 ``W_hat`` written and the packed codes read (the LUTs are tiny)."""
    return rows * cols * 2 + rows * cols * bits // 8


def timing_section(check: dict) -> list[str]:
    rows = check["timings"]
    names = list(rows[0]["ms"])
    lines = ["Median of 20 CUDA-event-timed calls after 3 warm-ups; bf16, 4 bits, 4 groups per row; "
             "milliseconds.", "", "| layer (out x in) | tokens | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['rows']}x{r['cols']} | {r['tokens']} | " + " | ".join(f"{r['ms'][n]:.3f}" for n in names) + " |")
    lines += ["", "Ratios (same run):", "",
              "| layer | tokens | fused / dense | (dequant+matmul) / dense | fused / (dequant+matmul) | "
              "LUT grad fused / dense bf16 grad_W | LUT grad via fp32 grad_W / fused | LUT grad materialised / fused | "
              "dequant GB/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["ms"]
        materialized = f"{m['lut_grad_materialized'] / m['lut_grad_fused_io']:.2f}x" if "lut_grad_materialized" in m else "-"
        moved = dequant_bytes(r["rows"], r["cols"], r["bits"])
        lines.append(f"| {r['rows']}x{r['cols']} | {r['tokens']} | {m['fused_matmul'] / m['dense_matmul']:.1f}x | "
                     f"{m['dequant+matmul'] / m['dense_matmul']:.1f}x | {m['fused_matmul'] / m['dequant+matmul']:.2f}x | "
                     f"{m['lut_grad_fused_io'] / m['dense_grad_w_bf16']:.1f}x | "
                     f"{m['lut_grad_via_fp32_grad_w'] / m['lut_grad_fused_io']:.2f}x | "
                     f"{materialized} | "
                     f"{moved / (m['dequant'] * 1e-3) / 1e9:.0f} |")
    return lines


def block_section(name: str, block: dict) -> list[str]:
    measured, probe = block["phases_measured_s"], block["phases_predicted_s"]
    sheet = block.get("phases_predicted_from_spec_sheet_s") or {}
    s = block["settings"]
    lines = [f"### {name}: {s['bits']} bits, G={s['groups_per_row']}, {block['calibration']['samples']} x "
             f"{block['calibration']['seq_len']} calibration tokens", "",
             f"{block['blocks']} block in {block['seconds']:.1f} s (peak GPU memory "
             f"{block['peak_device_memory_gib']:.1f} GiB); x{block['est_32_layers_s'] / block['seconds_per_block']:.0f} "
             f"layers = **{block['est_32_layers_s'] / 60:.1f} min** for a Llama-3-8B's blocks (no model load, no "
             "embedding/head).", "",
             "| phase | measured s | predicted, probe rates | predicted, spec sheet | measured / spec-sheet prediction |",
             "|---|---:|---:|---:|---:|"]
    for phase, p in probe.items():
        m = measured.get(phase, 0.0)
        q = sheet.get(phase)
        lines.append(f"| {phase} | {m:.2f} | {p:.2f} | {q:.2f} | {m / q:.2f} |" if q else f"| {phase} | {m:.2f} | {p:.2f} | - | - |")
    tm, tp, ts = sum(measured.values()), sum(probe.values()), sum(sheet.values())
    lines += [f"| **all** | **{tm:.2f}** | {tp:.2f} | {ts:.2f} | {tm / ts:.2f} |" if ts else f"| **all** | {tm:.2f} | {tp:.2f} | - | - |",
              "", "| layer | sketch s | rel. output error (calibration) |", "|---|---:|---:|"]
    for layer in block["layers"]:
        lines.append(f"| {layer['layer']} | {layer['sketch_s']:.2f} | {layer['rel_error']:.4f} |")
    return lines


def finetune_section(report: dict) -> list[str]:
    shape = report["shape"]
    lines = [f"{shape['blocks']} blocks (hidden {shape['hidden']}, intermediate {shape['intermediate']}, "
             f"{shape['heads']} / {shape['kv_heads']} heads), batch {report['batch']} x {report['seq_len']} tokens, "
             f"{report['bits']}-bit sketches with random codes; bf16 autocast, AdamW; median of "
             f"{report['timed_steps']} steps after 3 warm-ups.", "",
             "| method | trainable | params (M) | ms/step | tokens/s | peak GiB | step time / matched LoRA's | "
             "peak memory / matched LoRA's |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["methods"]:
        vs = r.get("vs_matched_lora") or {}
        peak = "-" if r["peak_device_memory_gib"] is None else f"{r['peak_device_memory_gib']:.1f}"
        time_ratio = f"{vs['step_time']:.2f}x" if vs else ""
        memory_ratio = f"{vs['peak_memory']:.2f}x" if vs.get("peak_memory") else ""
        lines.append(f"| {r['method']} | {r['trainable']} | {r['trainable_params'] / 1e6:.2f} | {r['ms_per_step']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {peak} | {time_ratio} | {memory_ratio} |")
    return lines


def render(folder: Path) -> str:
    lines = ["# GPU check: kernels, and compress and fine-tuning steps on Llama-3-8B-shaped blocks", "",
             "Written by `scripts/report_gpu.py` from the files beside this page (`scripts/gpu_session.sh`'s output).", ""]
    env = folder / "env.txt"
    if env.exists():
        lines += ["```", env.read_text().strip(), "```", ""]
    check_file = folder / "gpu_check.json"
    if check_file.exists():
        check = json.loads(check_file.read_text())
        lines += ["## Kernels against their PyTorch references (`scripts/gpu_check.py`)", ""] + correctness_section(check)
        if "timings" in check:
            lines += ["", "## Kernel timings", ""] + timing_section(check)
    blocks = [(n, folder / f"block_{n.lower().replace('=', '')}.json") for n in ("G=4", "G=1")]
    found = [(n, json.loads(p.read_text())) for n, p in blocks if p.exists()]
    if found:
        lines += ["", "## Compressing one Llama-3-8B-shaped block (`scripts/time_compress_block.py`)", "",
                  "Random weights and token ids (the time is real, the errors are not a quality figure); hidden 4096, "
                  "intermediate 14336, 32 heads / 8 KV heads; the product's own pipeline (`compress_model`). "
                  "Each block ran in its own process, G=4 first: its time includes the Triton compilations, which the G=1 run "
                  "could partly take from Triton's on-disk cache."]
        for name, block in found:
            lines += [""] + block_section(name, block)
    finetune_file = folder / "finetune_block.json"
    if finetune_file.exists():
        lines += ["", "## A fine-tuning step on Llama-3-8B-shaped blocks (`scripts/time_finetune_block.py`)", ""]
        lines += finetune_section(json.loads(finetune_file.read_text()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    a = p.parse_args(argv)
    out = a.folder / "gpu.md"
    out.write_text(render(a.folder))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
