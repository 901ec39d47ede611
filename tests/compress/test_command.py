"""`sketchtune compress` through the real CLI entry point: the artifact, stdout, and one-line errors that
leave nothing behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.loading import load_any

BASE = ["-n", "4", "--seq-len", "32", "--device", "cpu"]
FAST = ["--calib", "builtin", *BASE, "compress.kmeans_iters=10"]


def test_compress_writes_a_loadable_sketch_and_prints_only_its_path(tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "sk"
    code, stdout, stderr = run_cli("compress", tiny_model_dir, "-o", out, "--bits", "2", "-g", "2", "--plot", *FAST)
    assert code == 0, stderr
    assert stdout == f"{out}\n"
    manifest = read_manifest(out, stage="sketch")
    assert manifest.config["compress"]["bits"] == 2 and manifest.config["compress"]["kmeans_iters"] == 10
    res = manifest.results
    assert len(res["layers"]) == 14 and res["summary"]["layers"] == 14
    assert all(v["rel_error"] is not None and v["damping"] > 0 for v in res["layers"].values())
    assert res["calibration"] == {"source": "builtin", "num_samples": 4, "seq_len": 32, "requested_samples": 4,
                                  "stream_tokens": res["calibration"]["stream_tokens"]}
    assert (out / "layer_errors.png").stat().st_size > 1000
    assert not partial_dir(out).exists() and not (out / "checkpoints").exists()
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["bits"] == 2 and qcfg["groups_per_row"] == 2 and qcfg["calibration"] == "builtin"
    loaded = load_any(out)
    assert loaded.kind == "sketch"
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[1, 5, 9, 3]])).logits
    assert torch.isfinite(logits).all()


def test_model_and_settings_from_a_config_file_and_default_output(tiny_model_dir, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  name: {tiny_model_dir}\ncompress:\n  bits: 3\n  groups_per_row: 1\n")
    code, stdout, stderr = run_cli("compress", "--config", cfg, *FAST)
    assert code == 0, stderr
    expected = Path("runs") / f"{tiny_model_dir.name}-sketch-b3g1"
    assert stdout.strip() == str(expected) and (tmp_path / expected / "sketchtune.json").is_file()
    # an existing output needs --overwrite; with it, the artifact is replaced
    code, stdout, stderr = run_cli("compress", "--config", cfg, *FAST)
    assert code == 2 and "--overwrite" in stderr
    code, stdout, stderr = run_cli("compress", "--config", cfg, "--overwrite", *FAST)
    assert code == 0, stderr


@pytest.mark.parametrize("args, message", [
    (["no-such-org/no-such-model"], "neither an alias"),
    (["{model}", "--bits", "5"], "compress.bits"),
    (["{model}", "--groups-per-row", "3"], "groups_per_row=3 does not divide"),
    (["{model}", "--calib", "{empty}"], "is empty"),
    (["{model}", "--calib", "{missing}"], "does not exist"),
    (["{model}", "compress.no_such_key=1"], "unknown config key"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_model_dir, tmp_path, run_cli, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fmt = {"model": tiny_model_dir, "empty": empty, "missing": tmp_path / "missing.txt"}
    out = tmp_path / "out"
    argv = [a.format(**fmt) for a in args]
    code, stdout, stderr = run_cli("compress", "--calib", "builtin", *BASE, *argv, "-o", out)
    assert code == 2, stderr
    assert stdout == ""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], stderr
    assert not out.exists() and not partial_dir(out).exists()


def test_existing_output_is_refused_before_any_work(tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, stdout, stderr = run_cli("compress", tiny_model_dir, "-o", out, *FAST)
    assert code == 2 and "exists; pass --overwrite" in stderr
    assert (out / "keep.txt").read_text() == "mine" and not partial_dir(out).exists()


def test_help_has_examples(run_cli):
    code, stdout, _ = run_cli("compress", "--help")
    assert code == 0 and "Examples" in stdout and "--resume" in stdout and "accelerate launch" in stdout


HELD_OUT = [
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have? Answer: Tom has 8 apples.",
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon dioxide and water.",
]


@pytest.mark.embedded
def test_embedded_sketch_loads_and_stays_close_to_dense(embedded_sketch_dir, embedded_dir):
    """The shared fixture is built through the CLI (4-bit, G=4, 16 x 256 builtin tokens): it loads as a
    sketch and its held-out perplexity stays near the dense model's."""
    from sketchtune_cli.models import load_model

    manifest = read_manifest(embedded_sketch_dir, stage="sketch")
    assert manifest.results["summary"]["layers"] == 30 * 7
    sketch = load_any(embedded_sketch_dir).model
    dense, tok = load_model(str(embedded_dir), dtype="float32")
    nll_sketch = nll_dense = 0.0
    for text in HELD_OUT:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            nll_sketch += float(sketch(ids, labels=ids).loss)
            nll_dense += float(dense(ids, labels=ids).loss)
    ppl_sketch, ppl_dense = torch.exp(torch.tensor(nll_sketch / 3)), torch.exp(torch.tensor(nll_dense / 3))
    assert ppl_sketch < 1.5 * ppl_dense, (float(ppl_sketch), float(ppl_dense))
