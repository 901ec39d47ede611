"""Preflight: before any expensive work, `sketchtune run` and each stage command report every problem of
their inputs at once, one line each, exit 2, nothing written, no model weights loaded."""
from __future__ import annotations

import json
import socket

import pytest
import yaml

from helpers import run_cli, save_tiny_model


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(root) -> dict:
    """Every file with its size and mtime, every directory by name (the writability probe creates and
    removes a temporary directory, which moves its parent's mtime and nothing else)."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_weights(monkeypatch):
    """Every way a model's weights get loaded raises (the preflight reads configs and manifests only)."""
    import safetensors.torch
    import transformers

    from sketchtune_cli import loading, models, sketch
    from sketchtune_cli.sketch import format as sketch_format

    import importlib
    import pkgutil

    import sketchtune_cli

    # import every module first: one imported while the patches hold would keep `refuse` under a name it
    # bound with `from ... import`, and fail later tests
    for info in pkgutil.walk_packages(sketchtune_cli.__path__, "sketchtune_cli."):
        if not info.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(info.name)

    def refuse(*args, **kwargs):
        raise AssertionError("model weights loaded during the preflight")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "embedded_model_dir", refuse)
    monkeypatch.setattr(loading, "load_sketch_artifact", refuse)
    monkeypatch.setattr(sketch_format, "load_sketch", refuse)
    monkeypatch.setattr(sketch, "load_sketch", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine as a CPU-only node, whatever the test runner has."""
    from sketchtune_cli import preflight

    monkeypatch.setattr(preflight, "cuda_available", lambda: False)


def faulty_config(root, port: int) -> dict:
    """A run config with eleven faults in ten places."""
    model = save_tiny_model(root / "model")
    val = root / "val.json"
    val.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}]))
    data_dir = root / "la"
    (data_dir / "SVAMP").mkdir(parents=True)
    (data_dir / "SVAMP" / "test.json").write_text("[]")  # gsm8k/test.json is missing
    out = root / "runs"
    out.mkdir()
    (out / "eval").write_text("a stray file where the eval artifact goes")
    return {
        "model": {"name": str(model), "dtype": "float32"},
        "compress": {"calib": str(root / "missing_calib.txt"), "device": "cuda",
                     "num_samples": 2, "seq_len": 16},
        "data": {"path": f"http://127.0.0.1:{port}/math_10k.json", "val_path": str(val)},
        "train": {"batch_size": 6, "micro_batch_size": 4, "mixed_precision": "fp16", "max_steps": 2},
        "eval": {"tasks": ["gsm8k", "svamp", "st_nosuchtask"], "data_dir": str(data_dir)},
        "export": {"format": "hf-dense", "max_shard_size": "0GB"},
        "output_dir": str(out),
        "logging": {"plots": False},
    }


EXPECTED = [
    "http://127.0.0.1:{port}/math_10k.json",  # data URL that cannot be read
    "val.json: record 1 field 'output' is missing",  # malformed record
    "unknown task 'st_nosuchtask'",  # unknown eval task
    "gsm8k/test.json not found",  # eval data dir missing a file
    "eval: it is a file, not a directory",  # output that cannot be written
    "compress.device=cuda but this machine has no CUDA device",  # device absent
    "train.mixed_precision=fp16 needs a CUDA device",  # a device setting of the trainer
    "calibration file",  # missing calibration file
    "export.max_shard_size='0GB' is not a positive size",  # a size pydantic accepts
    "train.batch_size=6 must be a multiple of train.micro_batch_size",
    "not enough free disk",  # estimated artifacts against the (patched) free space
]


def test_run_reports_every_problem_at_once(tmp_path, capsys, monkeypatch, no_weights, cpu_only):
    from sketchtune_cli import preflight

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 1000)
    port = closed_port()
    cfg = faulty_config(tmp_path, port)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = snapshot(tmp_path)

    code, stdout, err = run_cli(capsys, "run", "--config", path)

    assert code == 2 and stdout == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert all(ln.startswith("error: ") for ln in lines), err
    for expected in EXPECTED:
        needle = expected.format(port=port)
        assert sum(needle in ln for ln in lines) == 1, f"{needle!r} not on exactly one line of:\n{err}"
    assert len(lines) == len(set(lines)) >= len(EXPECTED)
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written, not even the demo data or a .partial directory

    # a model that cannot be resolved is one more line; the other problems are still all reported
    cfg["model"]["name"] = str(tmp_path / "no-such-model")
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(capsys, "run", "--config", path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and f"model path {tmp_path / 'no-such-model'} does not exist" in err
    assert sum(any(e.format(port=port) in ln for ln in lines) for e in EXPECTED) >= 9


def test_dry_run_reports_the_real_record_count_and_the_trainers_steps(tmp_path, capsys, monkeypatch, no_weights):
    """The count is read from the file (no table of known names); steps round up as the trainer's do."""
    import math

    from sketchtune_cli import preflight
    from sketchtune_cli.config import load_config
    from sketchtune_cli.training.trainer import make_plan

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 1 << 50)
    n = 103
    train = tmp_path / "math_10k.json"  # the name of the real file, but not its 9,919 records
    train.write_text(json.dumps([{"instruction": f"{i}+1?", "output": str(i + 1)} for i in range(n)]))
    overrides = [f"data.path={train}", "data.val_fraction=0.05", "compress.calib=builtin",
                 f"output_dir={tmp_path / 'runs'}"]
    code, stdout, err = run_cli(capsys, "run", "--config", "math", "--dry-run", "--json", "--until", "finetune",
                                *overrides)
    assert code == 0, err
    report = json.loads(stdout)
    held_out = round(n * 0.05)
    assert report["train_records"] == n - held_out
    assert report["optimizer_steps"] == math.ceil(3 * (n - held_out) / 16)
    cfg = load_config("math", overrides)
    assert make_plan(cfg.train, n - held_out, 1).total_steps == report["optimizer_steps"]
    assert json.loads(json.dumps(report))["problems"] == []


def test_stage_commands_run_the_preflight(tmp_path, capsys, no_weights, cpu_only):
    """Each stage command reports its own problems together, before loading anything."""
    missing = tmp_path / "nope"
    model = save_tiny_model(tmp_path / "model")  # hidden size 64
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"instruction": "a"}\n{"output": "b"}\n')
    cases = [
        (["compress", str(missing), "--calib", str(tmp_path / "x.txt"), "--device", "cuda", "-o", str(tmp_path / "c")],
         ["model path", "calibration file", "compress.device=cuda"]),
        (["compress", str(model), "--groups-per-row", "3", "--calib", "builtin", "-o", str(tmp_path / "c")],
         ["groups_per_row=3 does not divide in_features=64"]),
        (["finetune", "--base", str(missing), "--data", str(bad_data), "-o", str(tmp_path / "f"),
          "train.mixed_precision=fp16"],
         [f"artifact {missing} does not exist", "record 0 field 'output' is missing",
          "record 1 field 'instruction' is missing", "fp16 needs a CUDA device"]),
        (["eval", str(missing), "--tasks", "st_nosuch,gsm8k", "--data-dir", str(tmp_path), "-o", str(tmp_path / "e")],
         ["model path", "unknown task 'st_nosuch'", "gsm8k/test.json not found"]),
        (["export", str(missing), "-o", str(tmp_path / "x"), "export.max_shard_size=lots"],
         [f"artifact {missing} does not exist", "export.max_shard_size='lots'"]),
    ]
    for argv, expected in cases:
        before = snapshot(tmp_path)
        code, stdout, err = run_cli(capsys, *argv)
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert code == 2 and stdout == "", (argv, err)
        for needle in expected:
            assert sum(needle in ln for ln in lines) == 1, (argv, needle, err)
        assert snapshot(tmp_path) == before, argv


def test_permission_denied_output(tmp_path):
    import os

    from sketchtune_cli.preflight import writable_problems

    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: the permission check cannot fail here")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert "no write permission" in writable_problems(locked / "runs" / "compress")[0]
    assert writable_problems(tmp_path / "runs" / "compress") == []
