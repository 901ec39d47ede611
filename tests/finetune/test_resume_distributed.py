"""Exact resume after a hard kill, and 2 CPU processes (DDP over gloo) against 1 at the same global batch."""
from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
from ft_helpers import FAST, cli_args, run_cli, run_subprocess
from safetensors.torch import load_file

from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.finetune.checkpoint import latest_checkpoint, read_state
from sketchtune_cli.finetune.trainer import CRASH_ENV
from sketchtune_cli.loading import LUT_ADAPTER

RECIPE = [*FAST, "data.limit=32", "train.max_steps=6", "train.save_every=3"]
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out):
    return [(r["step"], r["loss"]) for r in _metrics(out) if "loss" in r]


def _luts(out):
    return load_file(str(out / LUT_ADAPTER))


@pytest.fixture(scope="module")
def straight(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE)
    assert code == 0, err
    return out


def test_kill_and_resume_is_exact(straight, tiny_base, tmp_path):
    out = tmp_path / "killed"
    args = ["finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE]
    proc = run_subprocess(cli_args(*args), env={CRASH_ENV: "4", **NO_GPU})  # dies after step 4; checkpoint at 3
    assert proc.returncode == 99, proc.stderr[-2000:]
    assert not out.exists()
    ck = latest_checkpoint(partial_dir(out))
    assert read_state(ck)["step"] == 3
    assert [s for s, _ in _losses(partial_dir(out))] == [1, 2, 3, 4]
    code, stdout, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert stdout.strip() == str(out) and "resumed from step-0000003" in err
    assert _losses(out) == _losses(straight)  # the same float per step, steps 1..6 once each
    a, b = _luts(out), _luts(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(straight, tiny_base, tmp_path):
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(_free_port()), "-m", "sketchtune_cli"]
    # same global batch (4): 1 process x 2 micro x 2 accumulation vs 2 processes x 1 micro x 2 accumulation
    proc = run_subprocess(launch + ["finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE,
                                    "train.micro_batch_size=1"], env=NO_GPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    m = read_manifest(out, stage="finetune")
    assert m.results["processes"] == 2 and m.results["accumulation"] == 2
    one, two = _losses(straight), _losses(out)
    assert [s for s, _ in one] == [s for s, _ in two]
    torch.testing.assert_close(torch.tensor([l for _, l in two]), torch.tensor([l for _, l in one]), rtol=1e-5, atol=0)
    a, b = _luts(out), _luts(straight)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
