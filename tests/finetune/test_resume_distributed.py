"""Exact resume after a hard kill or a SIGUSR1 stop (1 and 2 processes), and 2 CPU processes (DDP or FSDP2 over gloo) against 1 at the same global
batch, including checkpoints resumed across 1-process and FSDP layouts."""
from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
from ft_helpers import FAST, cli_args, run_cli, run_subprocess
from safetensors.torch import load_file

from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.training.checkpoint import latest_checkpoint, read_state
from helpers import hook_env
from sketchtune_cli.loading import LUT_ADAPTER
from sketchtune_cli.preemption import EXIT_INTERRUPTED

RECIPE = [*FAST, "data.limit=32", "train.max_steps=6", "train.save_every=3"]
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out):
    return [(r["step"], r["loss"]) for r in _metrics(out) if "loss" in r]


def _luts(out):
    return load_file(str(out / LUT_ADAPTER))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs on one thread, like the subprocesses (run_subprocess sets OMP_NUM_THREADS=1): a
    resumed run is bit-identical only at the same thread count, since a CPU reduction's float summation
    order follows the number of threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def straight(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE)
    assert code == 0, err
    return out


def test_kill_and_resume_is_exact(straight, tiny_base, tmp_path):
    out = tmp_path / "killed"
    args = ["finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE]
    proc = run_subprocess(cli_args(*args), env={**hook_env("finetune:4:kill"), **NO_GPU})  # dies after step 4; checkpoint at 3
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


def test_sigusr1_checkpoints_the_step_in_hand_and_resume_is_exact(straight, tiny_base, tmp_path):
    out = tmp_path / "stopped"
    args = ["finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE]
    proc = run_subprocess(cli_args(*args), env={**hook_env("finetune:2:signal:SIGUSR1"), **NO_GPU})
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-2000:]
    assert proc.stdout == "" and not out.exists()
    assert "interrupted: SIGUSR1: stopped after step 2 of 6" in proc.stderr
    assert read_state(latest_checkpoint(partial_dir(out)))["step"] == 2  # not a save_every step: the stop's own
    code, stdout, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert "resumed from step-0000002" in err
    assert _losses(out) == _losses(straight)
    a, b = _luts(out), _luts(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _launch_ddp(*args: str, env: dict | None = None):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(_free_port()), "-m", "sketchtune_cli"]
    return run_subprocess(launch + list(args), env={**NO_GPU, **(env or {})})


@pytest.fixture(scope="module")
def ddp_straight(tiny_base, tmp_path_factory):
    """An uninterrupted 2-process DDP run (same global batch as `straight`: 1 micro x 2 accumulation x 2)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = _launch_ddp("finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE, "train.micro_batch_size=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    return out


def test_sigusr1_to_one_of_two_processes_stops_both_at_the_same_step(ddp_straight, tiny_base, tmp_path):
    """Only rank 0 is signalled (after step 2): the per-step all-reduce of the stop flag makes rank 1 stop
    after the same step, both exit 75, the checkpoint is whole, and the 2-process resume ends bit-identical."""
    out = tmp_path / "ddp-stopped"
    args = ["finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE, "train.micro_batch_size=1"]
    proc = _launch_ddp(*args, env=hook_env("finetune:2:signal:SIGUSR1", rank=0))
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.count(f"exitcode  : {EXIT_INTERRUPTED}") == 2, proc.stderr[-3000:]  # both workers
    assert read_state(latest_checkpoint(partial_dir(out)))["step"] == 2
    proc = _launch_ddp(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step-0000002" in proc.stderr
    assert _losses(out) == _losses(ddp_straight)
    a, b = _luts(out), _luts(ddp_straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(straight, ddp_straight):
    out = ddp_straight
    # same global batch (4): 1 process x 2 micro x 2 accumulation vs 2 processes x 1 micro x 2 accumulation
    m = read_manifest(out, stage="finetune")
    assert m.results["processes"] == 2 and m.results["accumulation"] == 2
    one, two = _losses(straight), _losses(out)
    assert [s for s, _ in one] == [s for s, _ in two]
    torch.testing.assert_close(torch.tensor([l for _, l in two]), torch.tensor([l for _, l in one]), rtol=1e-5, atol=0)
    a, b = _luts(out), _luts(straight)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def _launch_fsdp(*args: str, env: dict | None = None):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
              "--num_processes", "2", "--main_process_port", str(_free_port()), "-m", "sketchtune_cli"]
    return run_subprocess(launch + list(args), env={**NO_GPU, **(env or {})})


def _ckpt_tensors(out, step, name):
    return load_file(str(out / "checkpoints" / f"step-{step:07d}" / name))


def _assert_close_to_straight(run, straight):
    one, two = _losses(straight), _losses(run)
    assert [s for s, _ in one] == [s for s, _ in two]
    torch.testing.assert_close(torch.tensor([l for _, l in two]), torch.tensor([l for _, l in one]), rtol=1e-5, atol=0)
    # AdamW hides a wrong gradient scale from the losses; the (pre-clipping) gradient norm does not
    norms = [[r["grad_norm"] for r in _metrics(o) if "grad_norm" in r] for o in (run, straight)]
    torch.testing.assert_close(torch.tensor(norms[0]), torch.tensor(norms[1]), rtol=1e-4, atol=0)
    a, b = _luts(run), _luts(straight)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_fsdp_two_processes_match_one(straight, tiny_base, tmp_path):
    """FSDP2: the LUTs train sharded, the codes stay buffers; the per-step losses, the full LUTs written to
    the adapter and the gathered checkpoint (LUTs + AdamW moments) equal the 1-process run's."""
    out = tmp_path / "fsdp"
    proc = _launch_fsdp("finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE, "train.micro_batch_size=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    assert "FSDP2: 2 decoder blocks + root sharded over 2 processes" in proc.stderr
    m = read_manifest(out, stage="finetune")
    assert m.results["processes"] == 2 and m.results["accumulation"] == 2
    _assert_close_to_straight(out, straight)
    for name in ("luts.safetensors", "optimizer.safetensors"):
        a, b = _ckpt_tensors(out, 6, name), _ckpt_tensors(straight, 6, name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape, (name, k)
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert all(torch.equal(v, _luts(out)[k]) for k, v in _ckpt_tensors(out, 6, "luts.safetensors").items())


def test_fsdp_kill_and_resume_across_layouts(straight, tiny_base, tmp_path):
    """Checkpoints move between layouts: 1 process killed after step 3 (checkpoint at 2) -> resumed under FSDP
    (its shards cut from the full files), killed after step 5 (gathered checkpoint at 4) -> resumed in 1
    process; the run ends where the uninterrupted 1-process run does."""
    out = tmp_path / "relay"
    args = ["finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE, "train.micro_batch_size=1",
            "train.save_every=2"]  # save_every may change on resume; micro_batch_size=1 fits both layouts
    proc = run_subprocess(cli_args(*args), env={**hook_env("finetune:3:kill"), **NO_GPU})
    assert proc.returncode == 99, proc.stderr[-2000:]
    assert read_state(latest_checkpoint(partial_dir(out)))["step"] == 2
    proc = _launch_fsdp(*args, "--resume", env=hook_env("finetune:5:kill"))
    assert proc.returncode != 0 and "resumed from step-0000002" in proc.stderr, proc.stderr[-3000:]
    assert "FSDP2: 2 decoder blocks" in proc.stderr
    assert read_state(latest_checkpoint(partial_dir(out)))["step"] == 4
    code, stdout, err = run_cli(*args, "--resume")  # 1 process x 1 micro x 4 accumulation
    assert code == 0, err
    assert "resumed from step-0000004" in err
    assert read_manifest(out, stage="finetune").results["processes"] == 1
    _assert_close_to_straight(out, straight)


def test_fsdp1_is_refused_in_one_line(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets (version 1)
    monkeypatch.setenv("FSDP_VERSION", "1")
    out = tmp_path / "v1"
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(out), *RECIPE)
    assert code != 0 and "--fsdp_version 2" in err and "Traceback" not in err
    assert not out.exists() and not partial_dir(out).exists()


def test_fsdp_uneven_validation_shards_end_and_match_one(tiny_base, tmp_path):
    """3 validation examples over 2 processes (2 + 1): each FSDP forward gathers parameters, so every rank
    must run as many as the other (the short one pads); the run ends and its eval losses equal 1 process's."""
    args = [*RECIPE, "train.max_steps=2", "train.micro_batch_size=1", "data.val_path=demo", "data.val_limit=3",
            "train.eval_every=1"]
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(tmp_path / "one"), *args)
    assert code == 0, err
    proc = _launch_fsdp("finetune", "--base", str(tiny_base), "-o", str(tmp_path / "two"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [[r["eval_loss"] for r in _metrics(tmp_path / o) if r.get("eval_loss") is not None] for o in ("one", "two")]
    assert len(evals[0]) == 2  # after step 1, and the final one
    torch.testing.assert_close(torch.tensor(evals[1]), torch.tensor(evals[0]), rtol=1e-5, atol=0)
