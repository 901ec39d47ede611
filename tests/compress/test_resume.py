"""Resume: a run killed after block 1 and resumed gives the very bytes of an uninterrupted run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from compress.conftest import save_tiny_model
from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.compress.checkpoint import CHECKPOINT_DIR, CRASH_ENV, STATE

ARGS = ["--calib", "builtin", "-n", "4", "--seq-len", "32", "--device", "cpu", "--bits", "2", "-g", "2",
        "compress.kmeans_iters=10"]


@pytest.fixture(scope="module")
def three_blocks(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny3"), num_hidden_layers=3)


def test_killed_run_resumes_to_identical_bytes(three_blocks, tmp_path, run_cli):
    ref, out = tmp_path / "ref", tmp_path / "out"
    code, _, err = run_cli("compress", three_blocks, "-o", ref, *ARGS)
    assert code == 0, err

    env = {**os.environ, CRASH_ENV: "1"}
    crashed = subprocess.run([sys.executable, "-m", "sketchtune_cli", "compress", str(three_blocks), "-o", str(out), *ARGS],
                             env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 75, crashed.stderr
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
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    manifest, reference = read_manifest(out), read_manifest(ref)
    assert manifest.results["resumed_blocks"] == 2
    assert manifest.results["layers"].keys() == reference.results["layers"].keys()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # a truncated latest checkpoint: one line says so, the previous one is used, same bytes in the end
    latest = partial_dir(damaged) / CHECKPOINT_DIR / "block0001.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    code, stdout, err = run_cli("compress", three_blocks, "-o", damaged, "--resume", *ARGS)
    assert code == 0, err
    assert "cannot read the checkpoint after 2 blocks" in err and "previous checkpoint (after 1 blocks)" in err
    assert read_manifest(damaged).results["resumed_blocks"] == 1
    assert (damaged / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert read_manifest(damaged).results["layers"].keys() == reference.results["layers"].keys()


def test_resume_without_checkpoints_starts_fresh(tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "fresh"
    code, stdout, err = run_cli("compress", tiny_model_dir, "-o", out, "--resume", *ARGS)
    assert code == 0, err
    assert read_manifest(out).results["resumed_blocks"] == 0


def test_no_readable_checkpoint_says_how_to_start_over(three_blocks, tmp_path, run_cli):
    out = tmp_path / "out"
    env = {**os.environ, CRASH_ENV: "1"}
    crashed = subprocess.run([sys.executable, "-m", "sketchtune_cli", "compress", str(three_blocks), "-o", str(out), *ARGS],
                             env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 75, crashed.stderr
    ckpt = partial_dir(out) / CHECKPOINT_DIR
    (ckpt / "block0000.safetensors").write_bytes(b"\0" * 10)  # both checkpoints need block 0
    before = {p: p.read_bytes() for p in ckpt.iterdir()}
    code, stdout, err = run_cli("compress", three_blocks, "-o", out, "--resume", *ARGS)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines()[-1].startswith("error: no readable checkpoint in") and "start over" in err
    assert {p: p.read_bytes() for p in ckpt.iterdir()} == before
