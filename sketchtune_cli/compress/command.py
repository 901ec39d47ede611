"""`sketchtune compress`: parse, resolve the config, call ``stage.run_compress``, print the artifact path."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = """
Examples:

  # the embedded SmolLM2-135M on the CPU, offline calibration text, a few minutes:
  sketchtune compress smollm2-135m --calib builtin --num-samples 32 --seq-len 512

  # Llama-3-8B, 4 bits, 4 LUTs per row, 128 x 2048 tokens of C4, on a GPU:
  sketchtune compress llama-3-8b -o runs/l3-gpr4 --groups-per-row 4

  # calibrate on the fine-tuning data (alpaca-style JSON) and plot per-layer errors:
  sketchtune compress llama-3-8b --calib math_10k.json --plot -o runs/l3-math-calib

  # continue an interrupted run (same settings), with config-file settings and overrides:
  sketchtune compress --config math --resume compress.percdamp=0.01

  # several GPUs: calibration shared out, Hessians all-reduced, rank 0 writes:
  accelerate launch -m sketchtune_cli compress llama-3-8b -o runs/l3-gpr4

SIGTERM or SIGUSR1 (e.g. SLURM's --signal=B:USR1@300): the block in hand is finished and checkpointed, then
the command exits 75; the same command with --resume continues (and starts fresh when there is nothing to
resume, so a requeued job can always pass it).
"""


def compress_command(
    model: Optional[str] = typer.Argument(None, help="alias, HF Hub id, local directory or .gguf (default: config model.name)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, e.g. compress.percdamp=0.01"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="artifact directory (default runs/<model>-sketch-b{bits}g{G})"),
    bits: Optional[int] = typer.Option(None, "--bits", help="bits per code: 2, 3 or 4 (default 4)"),
    groups_per_row: Optional[int] = typer.Option(None, "--groups-per-row", "-g", help="LUTs per row (default 4)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="c4 | wikitext | HF dataset | .txt/.json/.jsonl file | builtin"),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="calibration sequences (default 128)"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per calibration sequence (default 2048)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cuda | cpu (default auto)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last finished block"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    plot: bool = typer.Option(False, "--plot", help="write a per-layer error plot into the artifact"),
    offload_activations: Optional[bool] = typer.Option(None, "--offload-activations", help="keep calibration activations on the CPU"),
    distill_steps: Optional[int] = typer.Option(None, "--distill-steps", min=0, help="then train the LUTs this many steps toward the dense model (KL on the calibration text; default 0 = off)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config file or bundled config name"),
):
    """Compress a model into fine-tunable sketches (LUTs + frozen codes), calibrated layer by layer."""
    from ..config import load_config
    from .. import preflight
    from ..stages import Job
    from ..errors import UserError
    from ..processes import launch_rank
    from .interface import STAGE
    from .stage import default_output, run_compress

    overrides = list(overrides or [])
    if model and "=" in model:  # `sketchtune compress --config x compress.bits=3`: no model, only overrides
        overrides.insert(0, model)
        model = None
    values = {"model.name": model, "compress.bits": bits, "compress.groups_per_row": groups_per_row,
              "compress.calib": calib, "compress.num_samples": num_samples, "compress.seq_len": seq_len,
              "compress.device": device, "compress.offload_activations": offload_activations or None,
              "compress.distill_steps": distill_steps}
    cfg = load_config(config, overrides, values=values)
    if "name" not in cfg.model.model_fields_set:  # never compress a default model nobody asked for
        raise UserError("give the MODEL to compress (alias, Hub id, directory or .gguf), or --config with model.name")
    c = cfg.compress
    output = output or default_output(cfg.model.name, c.bits, c.groups_per_row)
    preflight.require([(STAGE, Job(Path(output), overwrite=overwrite, resume=resume))], cfg)
    out = run_compress(STAGE.view(cfg), output, resume=resume, overwrite=overwrite, plot=plot)
    if launch_rank() == 0:  # one path on stdout even with several processes
        typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("compress", epilog=EXAMPLES, help=compress_command.__doc__ + "\n\n"
                "Writes a sketch artifact (HF model directory + sketchtune.json) and prints its path.")(compress_command)
