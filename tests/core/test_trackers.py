"""Trackers for every stage: `sketchtune run --config demo` (tiny overrides) with TensorBoard writes compress,
finetune and eval scalars under one run name; the event files are read back with TensorBoard's own reader."""
from __future__ import annotations

import pytest

from helpers import run_cli, save_tiny_model
from sketchtune_cli.artifacts import read_manifest


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(stage_dir))
        acc.Reload()
        found[stage_dir.name] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return found


def test_run_logs_every_stage_under_one_run_name(tmp_path, capsys):
    # tensorboard is in the `test` extra: this test must not skip in CI
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "exp"
    code, stdout, err = run_cli(
        capsys, "run", "--config", "demo", f"model.name={model}", "compress.num_samples=4", "compress.seq_len=32",
        "compress.kmeans_iters=5", "compress.lut_refit_rounds=1", "data.limit=32", "data.max_seq_len=512",
        "train.max_steps=3", "train.batch_size=4", "train.micro_batch_size=4", "train.eval_every=null",
        "train.save_every=null", "eval.limit=2", "eval.max_new_tokens=4", "eval.batch_size=2", "logging.plots=false",
        f"output_dir={out}", "logging.trackers=[tensorboard]", "logging.project=proj", "logging.tags=[a,b]")
    assert code == 0, err
    run_dir = out / "logs" / "proj" / "exp"  # logging.dir default: output_dir/logs; run name: output_dir's name
    scalars = _scalars(run_dir)
    assert {"compress", "finetune", "eval"} <= set(scalars)

    layers = read_manifest(out / "compress").results["layers"]
    errors = scalars["compress"]["rel_error"]
    assert [s for s, _ in errors] == list(range(len(layers)))  # one point per layer, in model order
    assert [v for _, v in errors] == pytest.approx([l["rel_error"] for l in layers.values()], rel=1e-6)
    assert len(scalars["compress"]["layer_seconds"]) == len(layers)

    losses = read_manifest(out / "finetune").results
    assert [s for s, _ in scalars["finetune"]["loss"]] == [1, 2, 3]
    assert scalars["finetune"]["loss"][-1][1] == pytest.approx(losses["final_loss"], rel=1e-6)

    score = read_manifest(out / "eval").results["models"][0]["scores"]["st_demo_arith"]
    assert scalars["eval"]["st_demo_arith"] == [(0, pytest.approx(score, rel=1e-6))]
