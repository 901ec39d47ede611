"""Resume: a run killed after block 2, or stopped by SIGUSR1 after block 1, and resumed gives the very bytes
of an uninterrupted run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from compress.conftest import save_tiny_model
from helpers import hook_env
from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.compress.checkpoint import CHECKPOINT_DIR, STATE
from sketchtune_cli.preemption import EXIT_INTERRUPTED

ARGS = ["--calib", "builtin", "-n", "4", "--seq-len", "32", "--device", "cpu", "--bits", "2", "-g", "2",
        "compress.kmeans_iters=10"]


@pytest.fixture(scope="module")
def three_blocks(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny3"), num_hidden_layers=3)


@pytest.fixture(scope="module")
def reference(three_blocks, tmp_path_factory):
    """An uninterrupted run."""
    ref = tmp_path_factory.mktemp("ref") / "ref"
    proc = _compress(three_blocks, ref)
    assert proc.returncode == 0, proc.stderr
    return ref


def _compress(model, out, *args, env=None):
    return subprocess.run([sys.executable, "-m", "sketchtune_cli", "compress", str(model), "-o", str(out), *ARGS, *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def _same_bytes(out, ref):
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_sigusr1_stops_after_the_block_in_hand_and_resume_is_exact(three_blocks, reference, tmp_path, run_cli):
    out = tmp_path / "out"
    stopped = _compress(three_blocks, out, env=hook_env("compress:1:signal:SIGUSR1"))  # signal once block 0 is done
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr
    assert stopped.stdout == "" and not out.exists()
    assert "SIGUSR1: stopped after block 1 of 3" in stopped.stderr and "--resume" in stopped.stderr
    assert len([ln for ln in stopped.stderr.splitlines() if ln.startswith("interrupted:")]) == 1
    assert json.loads((partial_dir(out) / CHECKPOINT_DIR / STATE).read_text())["blocks_done"] == 1
    code, stdout, err = run_cli("compress", three_blocks, "-o", out, "--resume", *ARGS)
    assert code == 0, err
    assert stdout == f"{out}\n" and read_manifest(out).results["resumed_blocks"] == 1
    _same_bytes(out, reference)


def test_killed_run_resumes_to_identical_bytes(three_blocks, reference, tmp_path, run_cli):
    ref, out = reference, tmp_path / "out"
    crashed = _compress(three_blocks, out, env=hook_env("compress:2:kill"))  # dies once block 1 is checkpointed
    assert crashed.returncode == 99, crashed.stderr
    assert crashed.stdout == "" and not out.exists()
    ckpt = partial_dir(out) / CHECKPOINT_DIR
    state = json.loads((ckpt / STATE).read_text())
    assert state["blocks_done"] == 2 and len(state["results"]) == 14
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == [  # block 1's inputs: the fallback
        "block0000.safetensors", "block0001.safetensors", "inputs-rank0-block0001.safetensors",
        "inputs-rank0-block0002.safetensors"]
    assert (partial_dir(out) / "lock").is_file()  # the dead holder's lock: stale, taken over by --resume
    damaged = tmp_path / "damaged"
    shutil.copytree(partial_dir(out), partial_dir(damaged))

    code, _, err = run_cli("compress", three_blocks, "-o", out, *ARGS)
    assert code == 2 and "--resume" in err  # an interrupted run is never silently restarted
    code, _, err = run_cli("compress", three_blocks, "-o", out, "--resume", *ARGS[:-1], "compress.kmeans_iters=11")
    assert code == 2 and "different configuration" in err
    assert (ckpt / STATE).is_file()  # the refused resume left the checkpoints alone

    code, stdout, err = run_cli("compress", three_blocks, "-o", out, "--resume", "--offload-activations", *ARGS)
    assert code == 0, err
    assert stdout == f"{out}\n" and not partial_dir(out).exists()
    _same_bytes(out, ref)
    manifest, uninterrupted = read_manifest(out), read_manifest(ref)
    assert manifest.results["resumed_blocks"] == 2
    assert manifest.results["layers"].keys() == uninterrupted.results["layers"].keys()

    # a truncated latest checkpoint: one line says so, the previous one is used, same bytes in the end
    latest = partial_dir(damaged) / CHECKPOINT_DIR / "block0001.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    code, stdout, err = run_cli("compress", three_blocks, "-o", damaged, "--resume", *ARGS)
    assert code == 0, err
    assert "cannot read the checkpoint after 2 blocks" in err and "previous checkpoint (after 1 blocks)" in err
    assert read_manifest(damaged).results["resumed_blocks"] == 1
    assert (damaged / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert read_manifest(damaged).results["layers"].keys() == uninterrupted.results["layers"].keys()


def test_resume_without_checkpoints_starts_fresh(tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "fresh"
    code, stdout, err = run_cli("compress", tiny_model_dir, "-o", out, "--resume", *ARGS)
    assert code == 0, err
    assert read_manifest(out).results["resumed_blocks"] == 0


def test_no_readable_checkpoint_says_how_to_start_over(three_blocks, tmp_path, run_cli):
    out = tmp_path / "out"
    crashed = _compress(three_blocks, out, env=hook_env("compress:2:kill"))  # dies once block 1 is checkpointed
    assert crashed.returncode == 99, crashed.stderr
    ckpt = partial_dir(out) / CHECKPOINT_DIR
    (ckpt / "block0000.safetensors").write_bytes(b"\0" * 10)  # both checkpoints need block 0
    before = {p: p.read_bytes() for p in ckpt.iterdir()}
    code, stdout, err = run_cli("compress", three_blocks, "-o", out, "--resume", *ARGS)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines()[-1].startswith("error: no readable checkpoint in") and "start over" in err
    assert {p: p.read_bytes() for p in ckpt.iterdir()} == before
