"""Resume: a run killed after block 1 and resumed gives the very bytes of an uninterrupted run."""
from __future__ import annotations

import json
import os
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
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == [
        "block0000.safetensors", "block0001.safetensors", "inputs-rank0-block0002.safetensors"]

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


def test_resume_without_checkpoints_starts_fresh(tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "fresh"
    code, stdout, err = run_cli("compress", tiny_model_dir, "-o", out, "--resume", *ARGS)
    assert code == 0, err
    assert read_manifest(out).results["resumed_blocks"] == 0
