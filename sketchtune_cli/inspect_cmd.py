"""`sketchtune inspect`: summarise an artifact, or estimate a sketch's size from a model config alone."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from .artifacts import Manifest, lineage, read_manifest, verify_files
from .errors import UserError, describe
from .estimate import (compress_time_estimates, distill_memory_plan, distill_plan_rows, estimate_sketch,
                       human_bytes, human_seconds)

EXAMPLES = """
Examples:

  sketchtune inspect runs/l3-gpr4

  sketchtune inspect runs/l3-math --json | jq .trainable_params

  sketchtune inspect --estimate llama-3-8b --bits 4 --groups-per-row 4
"""


def _tensor_sizes(root: Path) -> dict:
    """Parameter counts and bytes read from safetensors headers (no tensor data loaded)."""
    from safetensors import safe_open

    out = {"lut_params": 0, "lut_bytes": 0, "code_bytes": 0, "unsketched_params": 0, "dense_bytes": 0, "layers": 0}
    for f in sorted(root.glob("*.safetensors")):
        try:
            st_ctx = safe_open(f, framework="pt")
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for a damaged header
            raise UserError(f"{f} cannot be read ({describe(e, 160)}); the "
                            f"artifact is damaged, re-create it") from None
        with st_ctx as st:
            for key in st.keys():
                sl = st.get_slice(key)
                numel = math.prod(sl.get_shape())
                nbytes = numel * _DTYPE_BYTES.get(sl.get_dtype(), 4)
                if key.endswith(".lut"):
                    out["lut_params"] += numel
                    out["lut_bytes"] += nbytes
                    out["layers"] += 1
                elif key.endswith(".codes"):
                    out["code_bytes"] += nbytes
                else:
                    out["unsketched_params"] += numel
                    out["dense_bytes"] += nbytes
    return out


_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "U8": 1, "I8": 1, "I32": 4, "I64": 8, "BOOL": 1}


def summarize(path: str | Path) -> dict:
    manifest = read_manifest(path, verify=False)
    try:
        verify_files(manifest)
        checksums = "ok"
    except UserError as e:
        checksums = f"FAILED: {e}"
    info: dict = {
        "path": str(Path(path)),
        "stage": manifest.stage,
        "format": manifest.format,
        "tool_version": manifest.tool_version,
        "created": manifest.created,
        "content_hash": manifest.content_hash,
        "checksums": checksums,
        "files": len(manifest.files),
        "bytes_on_disk": sum((Path(path) / f).stat().st_size for f in manifest.files if (Path(path) / f).is_file()),
        "lineage": [{"stage": m.stage, "path": str(m.path)} for m in lineage(manifest)],
    }
    info.update(_sketch_info(manifest))
    if manifest.results:
        info["results"] = {k: v for k, v in manifest.results.items() if not isinstance(v, (list, dict)) or k in ("summary", "scores")}
    return info


def _sketch_info(manifest: Manifest) -> dict:
    """Sketch parameters from the nearest sketch in the lineage; sizes from its safetensors headers."""
    from .sketch.format import read_sketch_config

    for m in lineage(manifest):
        if (m.path / "config.json").is_file():
            try:
                _, qcfg = read_sketch_config(m.path)
            except ValueError:
                continue
            sizes = _tensor_sizes(m.path)
            weights = sizes["code_bytes"] * 8 / qcfg["bits"]  # approximate when groups are padded
            return {
                "base_model": m.config.get("model", {}).get("name") if isinstance(m.config.get("model"), dict) else None,
                "bits": qcfg["bits"],
                "groups_per_row": qcfg["groups_per_row"],
                "sketched_layers": sizes["layers"],
                "trainable_params": sizes["lut_params"],
                "unsketched_params": sizes["unsketched_params"],
                "base_model_bytes": sizes["lut_bytes"] + sizes["code_bytes"] + sizes["dense_bytes"],
                "bits_per_weight": round((sizes["code_bytes"] + sizes["lut_bytes"]) * 8 / max(weights, 1), 4),
            }
    return {}


def _print_table(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for device in (info.pop("compress_time_predicted", None) or {}).values():  # compress.cost_model
        info[f"compress time on {device['device']} (predicted)"] = human_seconds(device["seconds"]["total"])
    distill = info.pop("distill_memory", None)
    for key, value in info.items():
        if key.endswith("_bytes") and isinstance(value, int):
            value = f"{human_bytes(value)} ({value:,} B)"
        elif isinstance(value, int) and key.endswith("params"):
            value = f"{value:,}"
        elif isinstance(value, (list, dict)):
            value = json.dumps(value, default=str)
        table.add_row(key, str(value))
    for what, value in distill_plan_rows(distill) if distill else []:  # compress.distill_steps on this model
        table.add_row(what, value)
    Console().print(table)


def inspect(
    artifact: Optional[str] = typer.Argument(None, help="artifact directory to summarise"),
    estimate: Optional[str] = typer.Option(None, "--estimate", help="model alias/id/dir: estimate a sketch from its config alone"),
    bits: int = typer.Option(4, "--bits", help="bits per code (2, 3, 4) for --estimate"),
    groups_per_row: int = typer.Option(4, "--groups-per-row", "-g", help="LUTs per row for --estimate"),
    num_samples: int = typer.Option(128, "--num-samples", min=1, help="calibration sequences, for --estimate's compress time"),
    seq_len: int = typer.Option(2048, "--seq-len", min=8, help="tokens per calibration sequence, for --estimate's compress time"),
    as_json: bool = typer.Option(False, "--json", help="print JSON on stdout"),
):
    """Summarise an artifact (stage, lineage, bits, groups_per_row, parameter counts, bytes, checksums),
    or estimate a sketch's trainable parameters and size from a model's config alone."""
    if (artifact is None) == (estimate is None):
        raise UserError("give either an ARTIFACT to inspect or --estimate MODEL")
    if estimate is not None:
        if bits not in (2, 3, 4):
            raise UserError(f"--bits must be 2, 3 or 4, got {bits}")
        from .compress.settings import CompressSettings
        from .models import load_model_config, meta_model

        model_config = load_model_config(estimate)  # read once: the estimate and the predictions share it
        est = estimate_sketch(meta_model(model_config), estimate, bits, groups_per_row)
        info = est.to_dict()
        settings = CompressSettings(bits=bits, groups_per_row=groups_per_row, num_samples=num_samples, seq_len=seq_len)
        info["compress_time_predicted"] = compress_time_estimates(model_config, settings)
        # compress.distill_steps at its default micro-batch and these calibration sequences
        info["distill_memory"] = distill_memory_plan(est, model_config, settings.distill_micro_batch_size, seq_len,
                                                     settings.distill_gradient_checkpointing, settings.distill_teacher)
    else:
        info = summarize(artifact)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
    else:
        _print_table(info)


def register(app: typer.Typer) -> None:
    app.command("inspect", epilog=EXAMPLES)(inspect)
