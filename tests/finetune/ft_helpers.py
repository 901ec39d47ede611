"""Helpers for finetune tests: the tiny base builder, a fast recipe, and CLI runners."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_base(directory: Path, tokenizer, groups_per_row: int = 4, seed: int = 0) -> Path:
    """A sketch artifact of a tiny random Llama whose vocabulary fits the tokenizer."""
    from helpers import random_sketches, tiny_llama

    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.sketch import replace_with_sketches, save_sketch

    model = tiny_llama(seed, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                       vocab_size=len(tokenizer), max_position_embeddings=512,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    replace_with_sketches(model, random_sketches(model, groups_per_row=groups_per_row, seed=seed))
    with write_artifact(directory, "sketch", {"test": "tiny random sketch"}) as w:
        save_sketch(model, tokenizer, w.path)
    return directory


# A quick recipe for the tiny model: demo data, short sequences, high LR so a few steps move the loss.
FAST = ["data.path=demo", "data.limit=64", "data.max_seq_len=96", "train.lr=3e-2", "train.warmup_steps=0",
        "train.batch_size=4", "train.micro_batch_size=2", "train.max_steps=6", "train.deterministic=true",
        "logging.plots=false"]


def run_cli(*args: str) -> tuple[int, str, str]:
    """The CLI in-process (fast); returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from sketchtune_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code or 0
    return code, out.getvalue(), err.getvalue()


def run_subprocess(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "sketchtune_cli", *args]


def rtn_sketches(model, bits: int = 4, groups_per_row: int = 4):
    """A quick data-free sketch: per (row, group) a uniform grid from min to max, codes = nearest level.
    A usable model (unlike random sketches) for when no compressed sketch is at hand."""
    import torch

    from sketchtune_cli.sketch import Sketch, find_target_linears

    out, levels = {}, 2**bits - 1
    for name, lin in find_target_linears(model).items():
        w = lin.weight.detach().float().reshape(lin.out_features, groups_per_row, -1)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-8) / levels
        codes = ((w - lo) / scale).round().clamp(0, levels).to(torch.uint8)
        lut = lo + scale * torch.arange(levels + 1, dtype=torch.float32)
        out[name] = Sketch(lut, codes, bits)
    return out
