"""`sketchtune export`: parse, resolve the config, call ``stage.export_artifact``, print the artifact path."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = """
Examples:

  # plain HF checkpoint (loads without sketchtune):
  sketchtune export runs/l3-math --format hf-dense -o out/l3-dense

  # packed sketch (transformers loads it after `import sketchtune_cli`):
  sketchtune export runs/l3-math --format hf-sketch -o out/l3-sketch

  # LUTs only, an adapter over the base sketch:
  sketchtune export runs/l3-math --format lut-only -o out/math-luts

  # fp32, eval scores in the model card, a config override:
  sketchtune export runs/l3-math --dtype fp32 --eval runs/l3-eval -o out/d \\
      export.max_shard_size=2GB
"""


def export_command(
    artifact: Path = typer.Argument(..., help="sketch or fine-tune artifact directory"),
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, e.g. export.dtype=fp32"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="hf-dense | hf-sketch | lut-only (default hf-dense)"),
    output: Path = typer.Option(..., "--output", "-o", help="export directory to write"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32 (default bf16)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config file or bundled config name"),
    base: Optional[str] = typer.Option(None, "--base", help="the fine-tune's base sketch, when it moved on its own (checked by content hash)"),
    evals: Optional[List[Path]] = typer.Option(None, "--eval", help="eval artifact whose scores go in the model card (repeatable)"),
):
    """Export a sketch or fine-tune as a plain HF checkpoint, a packed HF sketch, or LUTs only."""
    from .. import preflight
    from ..config import load_config
    from ..stages import Job
    from .interface import STAGE
    from .stage import export_artifact

    cfg = load_config(config, overrides, values={"export.format": fmt, "export.dtype": dtype})
    preflight.require([(STAGE, Job(output, overwrite=overwrite, inputs=(str(artifact),), base=base))], cfg)
    manifest = export_artifact(artifact, output, cfg.export, overwrite=overwrite, eval_artifacts=evals or [],
                               base=base)
    typer.echo(str(manifest.path))


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EXAMPLES, help=export_command.__doc__ + "\n\n"
                "Writes an export artifact (with sketchtune.json and a README.md model card) and prints its path.")(export_command)
