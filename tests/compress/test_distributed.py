"""Two CPU processes on gloo (torchrun) build the same sketch as one process, up to float reduction order,
and distill it together."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from compress.test_distill import ARGS as DISTILL_ARGS
from compress.test_distill import _kl_to_dense
from sketchtune_cli.artifacts import read_manifest
from sketchtune_cli.compress.distill import distill_problems
from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.compress.distributed import DistContext
from sketchtune_cli.sketch import load_sketch, sketched_layers

ARGS = ["--calib", "builtin", "-n", "5", "--seq-len", "32", "--device", "cpu", "--bits", "2", "-g", "2",
        "compress.kmeans_iters=10"]


def test_samples_and_layers_are_shared_out():
    shards = [DistContext(r, 2).shard(5) for r in range(2)]
    assert [list(s) for s in shards] == [[0, 1, 2], [3, 4]]
    assert [DistContext(0, 3).owner(i) for i in range(5)] == [0, 1, 2, 0, 1]


def test_two_processes_match_one(tiny_model_dir, tmp_path, run_cli):
    single, multi = tmp_path / "single", tmp_path / "multi"
    code, _, err = run_cli("compress", tiny_model_dir, "-o", single, *ARGS)
    assert code == 0, err
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "sketchtune_cli", "compress", str(tiny_model_dir), "-o", str(multi), *ARGS],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(multi)]  # rank 0 alone prints the path
    assert read_manifest(multi).results["world_size"] == 2
    a = sketched_layers(load_sketch(single))
    b = sketched_layers(load_sketch(multi))
    assert a.keys() == b.keys()
    dense = load_file(tiny_model_dir / "model.safetensors")
    differing = total = 0
    for name in a:
        weight = dense[f"{name}.weight"].float()
        wa, wb = a[name].dense_weight().float(), b[name].dense_weight().float()
        differing += int((wa != wb).sum())
        total += wa.numel()
        # A flipped near-tie code can move a whole 2-bit group's k-means to another local optimum, so the
        # two builds may differ by a fair fraction of their error; what must hold is equal quality.
        err_a, err_b = ((w - weight).norm() / weight.norm() for w in (wa, wb))
        assert abs(err_a - err_b) < 0.03 * err_a, (name, float(err_a), float(err_b))
    assert differing / total < 0.02  # Hessian sums in another order flip only a few near-tie codes


def test_two_processes_distill_the_sketch_they_built(tiny_model_dir, tmp_path, run_cli):
    """Distillation under torchrun: both processes train the whole student data-parallel (the Trainer's
    plan); with the topk teacher the main process alone writes the targets and the other reads them."""
    plain, multi = tmp_path / "plain", tmp_path / "multi"
    assert run_cli("compress", tiny_model_dir, "-o", plain, *DISTILL_ARGS)[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "sketchtune_cli", "compress", str(tiny_model_dir), "-o", str(multi), *DISTILL_ARGS,
         "--distill-steps", "12", "compress.distill_teacher=topk", "compress.distill_topk=8"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(multi)
    assert manifest.results["world_size"] == 2 and manifest.results["distill"]["steps"] == 12
    assert _kl_to_dense(tiny_model_dir, multi) < 0.8 * _kl_to_dense(tiny_model_dir, plain)


def test_distill_batch_must_split_over_the_processes():
    s = CompressSettings(distill_steps=4, distill_batch_size=4, distill_micro_batch_size=2)
    assert distill_problems(s, 1) == [] and distill_problems(s, 2) == []
    assert distill_problems(s, 3) == ["compress.distill_batch_size=4 must be a multiple of "
                                      "compress.distill_micro_batch_size x processes = 2 x 3"]
    assert distill_problems(CompressSettings(distill_steps=0, distill_batch_size=4, distill_micro_batch_size=2), 3) == []
