"""train.save_every_minutes: a checkpoint also when that much time passed since the last one."""
from __future__ import annotations

from ft_helpers import FAST, run_cli

from sketchtune_cli.training.checkpoint import CKPT_DIR


def _checkpoints(out):
    return sorted(p.name for p in (out / CKPT_DIR).glob("step-*"))


def test_time_interval_checkpoints(tiny_base, tmp_path):
    # 1e-6 minutes: due after every step; save_every (steps) off. KEEP=2 leaves the last two.
    timed = tmp_path / "timed"
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(timed), *FAST, "train.max_steps=3",
                           "train.save_every_minutes=0.000001")
    assert code == 0, err
    assert _checkpoints(timed) == ["step-0000002", "step-0000003"]
    # an hour: never due in a short run, so only the final checkpoint
    hourly = tmp_path / "hourly"
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(hourly), *FAST, "train.max_steps=3",
                           "train.save_every_minutes=60")
    assert code == 0, err
    assert _checkpoints(hourly) == ["step-0000003"]
