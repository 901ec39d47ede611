"""`sketchtune eval` end to end, offline: the embedded model and a sketch of it side by side, through both
protocols (generation and log-likelihood), twice (same numbers)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli
from sketchtune_cli.artifacts import read_manifest


def _responses(artifact: Path) -> dict[str, list]:
    return {str(p.relative_to(artifact)): [json.loads(line)["resps"] for line in p.read_text().splitlines()]
            for p in sorted((artifact / "samples").rglob("*.jsonl"))}


@pytest.mark.embedded
def test_side_by_side_offline_both_protocols_twice(fake_data_dir, eval_sketch_dir, tmp_path, capsys, no_network,
                                                  one_thread):
    common = ["eval", "smollm2-135m", str(eval_sketch_dir), "--data-dir", str(fake_data_dir),
              "--tasks", "gsm8k,boolq_ll", "--limit", "2", "--batch-size", "2", "--log-samples",
              "eval.max_new_tokens=4"]
    first, second = tmp_path / "a", tmp_path / "b"
    code, out, err = run_cli(capsys, *common, "-o", str(first))
    assert code == 0, err
    assert out.strip() == str(first)  # only the artifact path on stdout
    assert "smollm2-135m" in err and "average" in err  # the rich table went to stderr

    manifest = read_manifest(first, stage="eval")
    assert manifest.parent["path"] == str(eval_sketch_dir.resolve())  # lineage: the evaluated sketch
    assert [e["kind"] for e in manifest.config["evaluated"]] == ["model", "sketch"]
    assert set(manifest.config["data_files"]) == {"st_gsm8k", "st_boolq_ll"}
    table = (first / "results.md").read_text().splitlines()
    assert table[0] == f"| task | smollm2-135m | {eval_sketch_dir} |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| st_gsm8k", "| st_boolq_ll", "| average"]
    full = json.loads((first / "results" / "00-smollm2-135m.json").read_text())
    assert {"results", "configs", "versions", "config"} <= set(full)
    assert full["configs"]["st_gsm8k"]["generation_kwargs"]["max_gen_toks"] == 4
    samples = _responses(first)
    assert len(samples["samples/00-smollm2-135m/st_gsm8k.jsonl"]) == 2
    from sketchtune_cli.evaluate.report import slug

    assert len(samples[f"samples/{slug(str(eval_sketch_dir), 1)}/st_boolq_ll.jsonl"]) == 2

    code, out, err = run_cli(capsys, *common, "-o", str(second), "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["models"] == manifest.results["models"]  # same numbers the second time
    assert _responses(second) == samples  # and the same generations


def test_unreachable_lm_eval_dataset_is_one_line(tmp_path, capsys, no_network, monkeypatch):
    monkeypatch.delenv("SKETCHTUNE_DATA", raising=False)
    code, out, err = run_cli(capsys, "eval", "smollm2-135m", "--tasks", "boolq", "-o", str(tmp_path / "x"))
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # lm-eval may warn first
    assert len(errors) == 1 and "could not be loaded" in errors[0] and "--data-dir" in errors[0]
    assert not (tmp_path / "x").exists()


def test_missing_data_file_is_one_line(fake_data_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "smollm2-135m", "--data-dir", str(fake_data_dir),
                           "--tasks", "hellaswag", "-o", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1
    assert str(fake_data_dir / "hellaswag" / "test.json") in err


def test_overrides_are_told_apart_from_artifacts():
    from sketchtune_cli.evaluate.command import split_args

    assert split_args(["smollm2-135m", "runs/a", "eval.limit=3", "model.dtype=float32"]) == (
        ["smollm2-135m", "runs/a"], ["eval.limit=3", "model.dtype=float32"])


@pytest.mark.slow
@pytest.mark.embedded
def test_data_parallel_matches_single_process(fake_data_dir, tmp_path):
    """Two CPU processes under torchrun (gloo) shard the requests and give the single-process scores."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = ["eval", "smollm2-135m", "--data-dir", str(fake_data_dir), "--tasks", "gsm8k,piqa_ll", "--limit", "4",
            "eval.max_new_tokens=4", "--json"]
    runs = {}
    for name, launcher in {"single": [sys.executable, "-m"],
                           "dp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"]}.items():
        proc = subprocess.run(launcher + ["sketchtune_cli", *args, "-o", str(tmp_path / name)], env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout)["models"][0]["scores"]
        if name == "dp":
            assert "rank 1 of 2" in proc.stderr
    assert runs["dp"] == runs["single"]
