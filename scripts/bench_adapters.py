"""Adapter swapping on one base sketch: time and memory of switching lut-only adapters in place, against
reloading the whole sketch.

A lut-only adapter is only LUTs; the codes and dense tensors load once. This measures, in one run (the
machine is noisy, so compare the ratios): a full ``load_sketch`` (what switching costs without the bank),
adding an adapter to the bank (read + checksums + base-hash check + cast), activating one (in-place copy),
and the bytes each adapter holds against the loaded model. Swapped
logits are checked against a fresh load of each adapter.

The LUT values do not change the timings, so by default the base is a random sketch of the embedded model
(SmolLM2-135M; built in a temporary directory); pass ``--sketch`` for a real one.

    python scripts/bench_adapters.py [--sketch ARTIFACT] [--adapters 3] [--swaps 50] [--out benchmarks/adapters]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sketchtune_cli.artifacts import read_manifest, write_artifact
from sketchtune_cli.export.adapters import AdapterBank
from sketchtune_cli.export.stage import export_artifact
from sketchtune_cli.export.settings import ExportSettings
from sketchtune_cli.loading import LUT_ADAPTER, load_any
from sketchtune_cli.models import EMBEDDED, load_model
from sketchtune_cli.sketch import Sketch, find_target_linears, load_sketch, lut_state_dict, replace_with_sketches, save_sketch

TOKENS = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2, 17, 99, 1000]])


def seconds(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def random_embedded_sketch(out: Path):
    """A random 4-bit, G=4 sketch of the embedded model (format-valid; its quality is irrelevant here)."""
    model, tokenizer = load_model(EMBEDDED, dtype="float32")
    gen = torch.Generator().manual_seed(0)
    sketches = {}
    for name, lin in find_target_linears(model).items():
        rows, cols = lin.out_features, lin.in_features
        sketches[name] = Sketch(torch.randn(rows, 4, 16, generator=gen) * 0.02,
                                torch.randint(0, 16, (rows, 4, cols // 4), generator=gen, dtype=torch.uint8), 4)
    replace_with_sketches(model, sketches)
    with write_artifact(out, "sketch", {"model": {"name": EMBEDDED}, "note": "random sketch for bench_adapters"}) as w:
        save_sketch(model, tokenizer, w.path)
    return w.manifest


def fake_finetunes(base, root: Path, count: int) -> list:
    """``count`` fine-tune artifacts whose LUTs are the base's, perturbed (stand-ins for task adapters)."""
    luts = lut_state_dict(load_sketch(base.path))
    out = []
    for i in range(count):
        gen = torch.Generator().manual_seed(100 + i)
        with write_artifact(root / f"finetune-{i}", "finetune", {"note": "perturbed LUTs"}, parent=base) as w:
            save_file({k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in luts.items()}, str(w.path / LUT_ADAPTER))
        out.append(w.manifest)
    return out


def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    base = read_manifest(args.sketch, stage="sketch") if args.sketch else random_embedded_sketch(root / "sketch")
    adapters = []
    for ft in fake_finetunes(base, root, args.adapters):
        export_artifact(ft.path, root / f"luts-{ft.path.name}", ExportSettings(format="lut-only", dtype=args.dtype))
        adapters.append(root / f"luts-{ft.path.name}")

    sketch_load_s = seconds(lambda: load_sketch(base.path), 3)
    reload_s = seconds(lambda: load_any(adapters[0]), 3)  # what switching costs without the bank
    bank = AdapterBank(base)
    add_s = []
    for path in adapters:
        t0 = time.perf_counter()
        bank.add(path)
        add_s.append(time.perf_counter() - t0)

    names = [str(p) for p in adapters]
    swap_s = [seconds(lambda n=names[i % len(names)]: bank.activate(n), 1)[0] for i in range(args.swaps)]
    exact = []
    for name, path in zip(names, adapters):
        bank.activate(name)
        with torch.no_grad():
            exact.append(torch.equal(bank.model(TOKENS).logits, load_any(path).model(TOKENS).logits))

    result = {
        "model": args.sketch or f"{EMBEDDED} (random 4-bit G=4 sketch)",
        "host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "adapter_dtype_on_disk": args.dtype, "lut_dtype_in_memory": str(next(iter(bank.layers.values())).lut.dtype),
        "sketched_layers": len(bank.layers),
        "load_sketch_s": statistics.median(sketch_load_s),
        "full_reload_s": statistics.median(reload_s),
        "add_adapter_s": statistics.median(add_s),
        "swap_s_median": statistics.median(swap_s),
        "swap_s_max": max(swap_s),
        "reload_over_swap": statistics.median(reload_s) / statistics.median(swap_s),
        "model_bytes": bank.model_bytes(),
        "adapter_bytes_in_memory": bank.adapter_bytes(names[0]),
        "adapter_bytes_on_disk": sum(p.stat().st_size for p in adapters[0].iterdir() if p.is_file()),
        "base_sketch_bytes_on_disk": sum((Path(base.path) / f).stat().st_size for f in base.files),
        "swapped_logits_equal_fresh_load": all(exact),
    }
    shutil.rmtree(root, ignore_errors=True)
    return result


def markdown(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    rows = [
        ("base", r["model"]), ("sketched layers", r["sketched_layers"]),
        ("adapter on disk / LUT dtype in memory", f"{r['adapter_dtype_on_disk']} / {r['lut_dtype_in_memory']}"),
        ("reload: load_any(adapter) = verify + load sketch + apply LUTs", f"{r['full_reload_s'] * 1e3:.0f} ms"),
        ("  of which load_sketch alone (page cache warm)", f"{r['load_sketch_s'] * 1e3:.0f} ms"),
        ("add one adapter (read, verify, cast)", f"{r['add_adapter_s'] * 1e3:.0f} ms"),
        ("swap (in-place copy), median / max", f"{r['swap_s_median'] * 1e3:.1f} / {r['swap_s_max'] * 1e3:.1f} ms"),
        ("reload / swap", f"{r['reload_over_swap']:.0f}x"),
        ("loaded model", mib(r["model_bytes"])),
        ("one adapter in memory / on disk", f"{mib(r['adapter_bytes_in_memory'])} / {mib(r['adapter_bytes_on_disk'])}"),
        ("base sketch on disk", mib(r["base_sketch_bytes_on_disk"])),
        ("swapped logits == fresh load", r["swapped_logits_equal_fresh_load"]),
    ]
    lines = ["# Adapter swapping (scripts/bench_adapters.py)", "",
             f"CPU, {r['threads']} threads, torch {r['torch']}, load average {r['load_average_1min']} at the end; "
             "one run on a shared machine: read the ratios.", "",
             "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sketch", help="sketch artifact (default: random sketch of the embedded model)")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--swaps", type=int, default=50)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="adapter dtype on disk")
    ap.add_argument("--out", default="benchmarks/adapters", help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
