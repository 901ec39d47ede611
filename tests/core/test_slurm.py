"""The sbatch scripts in scripts/slurm run to the end under a faked SLURM environment: SLURM_* variables, and
`scontrol` / `srun` shims on PATH (srun runs its command; scontrol names this host and records requeues).
2 gloo processes on one node, a tiny model. One run is warned with SIGUSR1 mid-way, as SLURM's
`--signal=B:USR1@...` warns the batch shell: the script forwards it, the job step checkpoints and stops,
the script requeues the job, and the requeued script finishes with the LUTs of an uninterrupted run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import hook_env, save_tiny_model
from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.training.checkpoint import latest_checkpoint, read_state
from sketchtune_cli.loading import LUT_ADAPTER
from sketchtune_cli.preemption import EXIT_INTERRUPTED

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "scripts" / "slurm"
JOB_ID = "4242"

SCONTROL = """#!/bin/bash
# fake scontrol: `show hostnames LIST` names this host; `requeue ID` is recorded
case "$1 $2" in
  "show hostnames") echo 127.0.0.1 ;;
  requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "fake scontrol: unexpected $*" >&2; exit 1 ;;
esac
"""
SRUN = """#!/bin/bash
# fake srun: one task on this node; drop srun's own options, run the command in srun's place (signals reach it)
while [[ "$1" == -* ]]; do shift; done
exec "$@"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A faked SLURM job environment; returns run(script, hook=None, **settings) -> CompletedProcess."""
    root = tmp_path_factory.mktemp("slurm")
    fake = root / "bin"
    fake.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    log = root / "slurm.log"
    # the interpreter's bin directory holds torchrun, accelerate and python: what `source venv/bin/activate` gives
    path = os.pathsep.join([str(fake), str(Path(sys.executable).parent), os.environ["PATH"]])
    base_env = {**os.environ, "PATH": path, "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "node01", "SLURM_NNODES": "1",
                "SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "2", "SLURM_SUBMIT_DIR": str(root),
                "FAKE_SLURM_LOG": str(log), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def run(script: str, hook: str | None = None, **settings) -> subprocess.CompletedProcess:
        env = {**base_env, "PORT": str(_free_port()), **{k: str(v) for k, v in settings.items()}}
        cmd = ["bash", str(SLURM / script)]
        if hook:  # the job step signals the batch shell itself: the shell's pid is known once it runs
            env.update(hook_env(hook, rank=0))
            cmd = ["bash", "-c", 'export SKETCHTUNE_TEST_HOOK_PID=$$; exec bash "$0"', str(SLURM / script)]
        log.unlink(missing_ok=True)
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)

    run.root, run.log = root, log
    return run


@pytest.fixture(scope="module")
def tiny(cluster):
    model = save_tiny_model(cluster.root / "model")
    recipe = {"data": {"path": "demo", "limit": 32, "max_seq_len": 512},
              "train": {"lr": 3e-2, "warmup_steps": 0, "batch_size": 4, "micro_batch_size": 1, "max_steps": 6,
                        "deterministic": True, "mixed_precision": "no"},
              "logging": {"plots": False}}
    config = cluster.root / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    return model, config


def _tail(proc) -> str:
    return f"rc={proc.returncode}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def sketch(cluster, tiny):
    out = cluster.root / "compress"
    proc = cluster("compress.sbatch", MODEL=tiny[0], OUT=out,
                   ARGS="--calib builtin -n 4 --seq-len 32 --device cpu compress.kmeans_iters=5 compress.lut_dtype=float32")
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.strip() == str(out)
    return out


@pytest.fixture(scope="module")
def finetuned(cluster, tiny, sketch):
    out = cluster.root / "finetune"
    proc = cluster("finetune.sbatch", CONFIG=tiny[1], BASE=sketch, OUT=out)
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.strip() == str(out)
    return out


def test_compress_script_runs_two_processes(sketch, cluster):
    m = read_manifest(sketch, stage="sketch")
    assert m.results["world_size"] == 2
    assert not cluster.log.exists()  # finished: nothing requeued


def test_finetune_script_runs_two_processes(finetuned):
    m = read_manifest(finetuned, stage="finetune")
    assert m.results["processes"] == 2 and m.results["steps"] == 6


def test_finetune_script_warned_mid_run_requeues_and_the_requeued_job_matches(cluster, tiny, sketch, finetuned):
    out = cluster.root / "finetune-preempted"
    proc = cluster("finetune.sbatch", hook="finetune:2:signal:SIGUSR1", CONFIG=tiny[1], BASE=sketch, OUT=out,
                   SKETCHTUNE_TEST_HOOK_WAIT="1")
    assert proc.returncode == EXIT_INTERRUPTED, _tail(proc)
    assert cluster.log.read_text() == f"requeue {JOB_ID}\n"
    assert "SIGUSR1, checkpointing" in proc.stderr and not out.exists()
    assert read_state(latest_checkpoint(partial_dir(out)))["step"] == 2  # both ranks stopped after step 2
    again = cluster("finetune.sbatch", CONFIG=tiny[1], BASE=sketch, OUT=out)  # what the requeued job runs
    assert again.returncode == 0, _tail(again)
    assert "resumed from step-0000002" in again.stderr and not cluster.log.exists()
    a, b = load_file(str(out / LUT_ADAPTER)), load_file(str(finetuned / LUT_ADAPTER))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_script_runs_two_processes(cluster, finetuned):
    from sketchtune_cli.finetune.demo_data import demo_records

    data = cluster.root / "data"
    (data / "demo_arith").mkdir(parents=True)
    (data / "demo_arith" / "test.json").write_text(json.dumps(demo_records("test", n=4, seed=0)))
    out = cluster.root / "eval"
    proc = cluster("eval.sbatch", MODELS=finetuned, OUT=out, TASKS="demo_arith",
                   ARGS=f"--data-dir {data} --limit 4 --max-new-tokens 4 --batch-size 2")
    assert proc.returncode == 0, _tail(proc)
    assert "st_demo_arith" in read_manifest(out, stage="eval").results["models"][0]["scores"]


def test_run_script_runs_all_stages(cluster, tiny):
    out = cluster.root / "run"
    overrides = (f"model.name={tiny[0]} compress.calib=builtin compress.num_samples=4 compress.seq_len=32 "
                 f"compress.kmeans_iters=5 compress.device=cpu train.max_steps=2 eval.tasks=[demo_arith] eval.limit=2 eval.max_new_tokens=4 "
                 f"eval.batch_size=2 export.dtype=fp32 output_dir={out}")
    proc = cluster("run.sbatch", CONFIG=tiny[1], ARGS=overrides)
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.strip() == str(out / "export")
    assert all((out / s / "sketchtune.json").is_file() for s in ("compress", "finetune", "eval", "export"))


def test_every_script_is_tested_and_preemption_safe():
    scripts = sorted(p.name for p in SLURM.glob("*.sbatch"))
    assert scripts == ["compress.sbatch", "eval.sbatch", "finetune.sbatch", "run.sbatch"]
    for name in scripts:
        text = (SLURM / name).read_text()
        assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text, name
        assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "trap " in text, name
    for name in ("compress.sbatch", "finetune.sbatch"):
        assert "--resume" in (SLURM / name).read_text()
