"""`sketchtune run`: one YAML drives all four stages; a second run skips them; config changes are never
silently overwritten; --dry-run works offline; config errors are one line with exit 2."""
import json
import subprocess
import sys

import pytest
import yaml

from helpers import run_cli, save_tiny_model
from sketchtune_cli.artifacts import read_manifest


@pytest.fixture(scope="module")
def tiny_run_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model_dir = save_tiny_model(root / "model")
    cfg = {
        "model": {"name": str(model_dir), "dtype": "float32"},
        "compress": {"calib": "builtin", "num_samples": 4, "seq_len": 32, "kmeans_iters": 5, "lut_dtype": "float32",
                     "dtype": "float32", "device": "cpu"},
        "data": {"path": "demo", "limit": 32, "max_seq_len": 512},
        "train": {"lr": 1e-3, "max_steps": 2, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                  "mixed_precision": "no"},
        "eval": {"tasks": ["demo_arith"], "limit": 3, "max_new_tokens": 4, "batch_size": 3},
        "export": {"format": "hf-dense", "dtype": "fp32"},
        "output_dir": str(root / "out"),
        "logging": {"plots": False},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, root / "out"


def test_run_all_stages_then_skip(capsys, tiny_run_config):
    path, out = tiny_run_config
    code, stdout, err = run_cli(capsys, "run", "--config", path, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert [r["stage"] for r in report] == ["compress", "finetune", "eval", "export"]
    assert all(r["status"] == "ran" for r in report)
    for stage in ("compress", "finetune", "eval", "export"):
        m = read_manifest(out / stage)
        assert m.config  # the resolved config is in every artifact
    assert read_manifest(out / "finetune").parent["content_hash"] == read_manifest(out / "compress").content_hash
    assert "st_demo_arith" in read_manifest(out / "eval").results["models"][0]["scores"]

    code, stdout, err = run_cli(capsys, "run", "--config", path, "--json")
    assert code == 0, err
    assert [r["status"] for r in json.loads(stdout)] == ["skipped"] * 4

    # a changed training config is refused without --overwrite, and nothing is lost
    before = read_manifest(out / "finetune").content_hash
    code, stdout, err = run_cli(capsys, "run", "--config", path, "train.lr=2e-3")
    assert code == 2 and "another config" in err and "--overwrite" in err
    assert read_manifest(out / "finetune").content_hash == before

    # --from/--until run a part; the changed stage re-runs with --overwrite, compress is still skipped
    code, stdout, err = run_cli(capsys, "run", "--config", path, "train.lr=2e-3", "--until", "finetune",
                                "--overwrite", "--json")
    assert code == 0, err
    assert [(r["stage"], r["status"]) for r in json.loads(stdout)] == [("compress", "skipped"), ("finetune", "ran")]


def math_shaped_inputs(root, n=37):
    """A Math10K-shaped training file of ``n`` records and a data dir with a gsm8k test file."""
    train = root / "math_10k.json"
    train.write_text(json.dumps([{"instruction": f"What is {i} + 1?", "input": "", "output": f"{i + 1}"}
                                 for i in range(n)]))
    (root / "la" / "gsm8k").mkdir(parents=True)
    (root / "la" / "gsm8k" / "test.json").write_text(json.dumps([{"instruction": "1+1?", "answer": "2"}]))
    return train, root / "la"


def test_dry_run_math_offline(capsys, tmp_path, monkeypatch):
    # local inputs: offline, the bundled URL is itself a problem the dry-run reports (test_preflight.py)
    from sketchtune_cli import preflight

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 1 << 50)
    train, data_dir = math_shaped_inputs(tmp_path)
    code, stdout, err = run_cli(capsys, "run", "--config", "math", "--dry-run", "--json", f"data.path={train}",
                                f"eval.data_dir={data_dir}", "eval.tasks=[gsm8k]", "compress.calib=builtin",
                                f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["trainable_params"] == 88_080_384 and report["sketch"]["sketched_layers"] == 224
    assert "88,080,384" in err
    # finetune and export wait for the sketch: sized from the compress plan's (Job.planned_sketch), not from
    # compress's config sections, which they cannot read: LUTs fp32 + a checkpoint's LUTs and AdamW moments
    assert report["artifact_bytes"]["finetune"] == 88_080_384 * (4 + 3 * 4 * 2)
    assert report["artifact_bytes"]["export"] > 0
    assert report["finetune_memory_bytes_rough"] and all(v > 0 for v in report["finetune_memory_bytes_rough"].values())
    # the cost model's compress time: this machine (probed) and the named GPUs (tests/compress/test_cost_model.py)
    predicted = report["estimates"]["compress"]["compress_time"]
    assert predicted["h200"]["seconds"]["total"] > 0 and "compress time on H200 SXM (predicted)" in err


@pytest.mark.parametrize(
    "content,override,message",
    [
        ("train:\n  lr: [1\n", None, "not valid YAML at line"),
        ("train:\n  lrate: 1\n", None, "unknown config key train.lrate; did you mean train.lr?"),
        ("train:\n  max_steps: many\n", None, "config key train.max_steps: Input should be a valid integer"),
        ("", "compress.groups_per_rows=2", "did you mean compress.groups_per_row?"),
    ],
)
def test_config_errors_are_one_line_exit_2(tmp_path, content, override, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    args = [sys.executable, "-m", "sketchtune_cli", "run", "--config", str(path), "--dry-run"]
    args += [override] if override else []
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_each_artifact_file_is_hashed_once_per_run(capsys, tiny_run_config, tmp_path, monkeypatch):
    """`sketchtune run` hashes each artifact's files once per process: a stage hands on the manifest it
    verified (or just wrote) instead of the next stage reading the directory again."""
    from collections import Counter
    from pathlib import Path

    from sketchtune_cli import artifacts

    path, _ = tiny_run_config
    out = tmp_path / "out"
    stages = ("compress", "finetune", "eval", "export")
    counts: Counter = Counter()
    real = artifacts.sha256_file

    def counting(file, *args, **kwargs):
        rel = Path(file).resolve().relative_to(out.resolve()) if Path(file).resolve().is_relative_to(out.resolve()) else None
        if rel is not None and rel.parts[0].removesuffix(".partial") in stages:  # a writer hashes in <stage>.partial
            counts[(rel.parts[0].removesuffix(".partial"), Path(*rel.parts[1:]).as_posix())] += 1
        return real(file, *args, **kwargs)

    monkeypatch.setattr(artifacts, "sha256_file", counting)

    code, stdout, err = run_cli(capsys, "run", "--config", path, f"output_dir={out}", "--json")
    assert code == 0, err
    assert [r["status"] for r in json.loads(stdout)] == ["ran"] * 4
    files = {(stage, rel) for stage in stages for rel in read_manifest(out / stage, verify=False).files}
    assert {f: counts[f] for f in files} == dict.fromkeys(files, 1)  # hashed when written, never again
    assert set(counts) == files

    counts.clear()
    code, stdout, err = run_cli(capsys, "run", "--config", path, f"output_dir={out}", "--json")
    assert code == 0, err
    assert [r["status"] for r in json.loads(stdout)] == ["skipped"] * 4
    assert dict(counts) == dict.fromkeys(files, 1)  # each artifact verified once, though each is also a parent

    # A stage on its own too: exporting the fine-tune reads it and its base sketch, each once (the preflight
    # that sizes the export finds the base without hashing it).
    counts.clear()
    code, _, err = run_cli(capsys, "export", out / "finetune", "--format", "lut-only", "-o", tmp_path / "lut")
    assert code == 0, err
    read = {f for f in files if f[0] in ("compress", "finetune")}
    assert dict(counts) == dict.fromkeys(read, 1)
