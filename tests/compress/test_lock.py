"""The output lock with real processes: a second compress on a live run's output is refused in one line and
the first finishes intact; a run killed with SIGKILL leaves a stale lock that `--resume` takes over, ending
bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import hook_env
from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.compress.checkpoint import CHECKPOINT_DIR, STATE
from sketchtune_cli.output_lock import read_holder

ARGS = ["--calib", "builtin", "-n", "4", "--seq-len", "32", "--device", "cpu", "--bits", "2", "-g", "2",
        "compress.kmeans_iters=10"]


def _start(model, out, **env):
    return subprocess.Popen([sys.executable, "-m", "sketchtune_cli", "compress", str(model), "-o", str(out), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _wait_for(path, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_second_run_refused_and_killed_run_resumes(tiny_model_dir, tmp_path, run_cli):
    first, killed = tmp_path / "first", tmp_path / "killed"
    # b kills itself with SIGKILL once block 0 is checkpointed: on an idle machine a tiny compress could
    # otherwise finish before a watcher saw its checkpoint
    a, b = _start(tiny_model_dir, first), _start(tiny_model_dir, killed, **hook_env("compress:1:signal:SIGKILL"))
    try:
        _wait_for(partial_dir(first) / "lock", a)
        assert read_holder(partial_dir(first)).pid == a.pid
        for extra in ([], ["--resume"], ["--overwrite"]):  # no flag gets past a live holder
            code, stdout, err = run_cli("compress", tiny_model_dir, "-o", first, *ARGS, *extra)
            assert code == 2 and stdout == "", err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and f"being written by a running sketchtune, pid {a.pid}" in lines[0], err
            assert "--resume" not in lines[0]

        b.wait(timeout=240)
        assert (partial_dir(killed) / CHECKPOINT_DIR / STATE).exists()  # block 0 is checkpointed
        assert b.returncode == -signal.SIGKILL and not killed.exists()
        assert read_holder(partial_dir(killed)).pid == b.pid  # the dead holder's lock is still there
    except BaseException:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
        raise
    _, err_a = a.communicate(timeout=300)
    assert a.returncode == 0, err_a
    reference = read_manifest(first)  # verifies every checksum and the seal
    assert not (first / "lock").exists() and not partial_dir(first).exists()

    code, _, err = run_cli("compress", tiny_model_dir, "-o", killed, *ARGS)
    assert code == 2 and "--resume" in err  # a dead holder: the interrupted-run message
    code, stdout, err = run_cli("compress", tiny_model_dir, "-o", killed, *ARGS, "--resume")
    assert code == 0, err
    assert stdout.strip() == str(killed)
    assert read_manifest(killed).results["resumed_blocks"] >= 1
    assert (killed / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert reference.results["layers"].keys() == read_manifest(killed).results["layers"].keys()
