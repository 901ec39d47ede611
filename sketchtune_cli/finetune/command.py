"""`sketchtune finetune`: train only the LUTs of a sketch; prints the fine-tune artifact path."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = """
Examples:

  sketchtune finetune --config math.yaml --base runs/l3/compress -o runs/l3/math

  sketchtune finetune --base runs/demo/compress --data demo -o runs/demo/ft train.lr=1e-4 train.max_steps=50

  accelerate launch --multi_gpu --num_processes 2 -m sketchtune_cli finetune --config math.yaml --base SKETCH -o OUT

  torchrun --nproc_per_node 2 -m sketchtune_cli finetune --config math.yaml -o OUT   # also on CPU (gloo)

  sketchtune finetune --config math.yaml -o runs/l3/math --resume      # continue an interrupted run

  sketchtune eval $(sketchtune finetune --config math.yaml --base SKETCH -o OUT) --tasks gsm8k

SIGTERM or SIGUSR1 (e.g. SLURM's --signal=B:USR1@300): every process finishes the optimizer step in hand,
the checkpoint is written, the command exits 75; the same command with --resume continues (and starts fresh
when there is nothing to resume). A checkpoint is also written every train.save_every_minutes (default 30).
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "finetune",
        help="Fine-tune only the LUTs of a sketch (AdamW, response-token loss) and write a small adapter "
             "artifact (lut_adapter.safetensors + manifest pointing at the base sketch). Config keys: the "
             "data: and train: sections; trailing key=value arguments override them.",
        epilog=EXAMPLES,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    def finetune(
        overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="config overrides, e.g. train.lr=3e-5"),
        config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML run config (path or bundled name)"),
        base: Optional[str] = typer.Option(None, "--base", help="sketch artifact to fine-tune (train.base; default output_dir/compress)"),
        data: Optional[str] = typer.Option(None, "--data", help="training data (data.path): a .json/.jsonl file or URL, a HF dataset name[:subset], or demo"),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="artifact directory (default output_dir/finetune)"),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after N optimizer steps (train.max_steps)"),
        resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in OUT.partial from its last checkpoint"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing artifact at OUT"),
    ) -> None:
        from .. import preflight
        from ..config import load_config
        from ..processes import launch_rank
        from ..stages import Job
        from .interface import STAGE
        from .stage import default_output, run_finetune

        cfg = load_config(config, overrides or [], values={"train.base": base, "data.path": data, "train.max_steps": max_steps})
        out = Path(output) if output else default_output(cfg)
        preflight.require([(STAGE, Job(out, overwrite=overwrite, resume=resume))], cfg)
        path = run_finetune(STAGE.view(cfg), out, resume=resume, overwrite=overwrite)
        if launch_rank() == 0:  # one path on stdout even with several processes
            print(path)
