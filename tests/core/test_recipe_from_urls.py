"""Issue 15, "done when": `sketchtune run --config math` with size overrides only and no data or data-dir
flag runs all four stages against a loopback server standing in for the LLM-Adapters repository (a
Math10K-shaped training file and LLM-Adapters-shaped test files built here); a second run fetches
nothing; a served file whose bytes differ from the pinned hash is refused, one line per use of it.

The served files are this test's own, so the pin table is swapped for theirs in this process (the CLI
runs in-process); the mirror is named by the documented $SKETCHTUNE_LLM_ADAPTERS_URL.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from loopback_server import Loopback, only_loopback

from helpers import run_cli, save_tiny_model
from sketchtune_cli import llm_adapters
from sketchtune_cli.artifacts import read_manifest
from sketchtune_cli.evaluate.registry import GROUPS, repo_test_file
from sketchtune_cli.finetune.demo_data import demo_records
from sketchtune_cli.remote import Pin

TRAIN = "ft-training_set/math_10k.json"
# Size overrides (fewer calibration tokens, records, steps, examples) and what a CPU needs; nothing else.
SIZES = ["compress.num_samples=2", "compress.seq_len=32", "compress.kmeans_iters=2", "compress.lut_refit_rounds=0",
         "data.limit=16", "data.max_seq_len=512", "train.max_steps=2", "train.batch_size=4",
         "train.micro_batch_size=4", "train.warmup_steps=0", "train.save_every=2", "eval.limit=2",
         "eval.max_new_tokens=8", "eval.batch_size=2"]
CPU = ["model.dtype=float32", "compress.dtype=float32", "compress.lut_dtype=float32", "compress.device=cpu",
       "train.mixed_precision='no'", "train.gradient_checkpointing=false", "export.dtype=fp32", "logging.plots=false"]


def served_files() -> dict[str, bytes]:
    """A Math10K-shaped training file and the seven math test files (AQuA: letter answers)."""
    files = {TRAIN: json.dumps(demo_records("train", 48, seed=5), indent=4).encode()}
    for i, task in enumerate(GROUPS["st_math"]):
        records = demo_records("test", 3, seed=i)
        if task == "st_aqua":
            records = [{**r, "instruction": r["instruction"] + f" Answer Choices: (A) 1 (B) {r['answer']}", "answer": "B"}
                       for r in records]
        files[repo_test_file(task)] = json.dumps(records, indent=4).encode()
    return files


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads spin-wait against other jobs (the
    embedded model's compress ran ~10x slower with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """The loopback server as the LLM-Adapters mirror, the pins of its files, a private cache, no data
    dir and no network beyond 127.0.0.1."""
    files = served_files()
    monkeypatch.setattr(llm_adapters, "pins", lambda: {p: Pin(sha256=hashlib.sha256(b).hexdigest()) for p, b in files.items()})
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "SKETCHTUNE_DATA"):
        monkeypatch.delenv(var, raising=False)
    only_loopback(monkeypatch)
    with Loopback({f"/{p}": b for p, b in files.items()}) as srv:
        monkeypatch.setenv(llm_adapters.BASE_ENV, srv.url)
        yield srv, files


def use_cache(monkeypatch, root: Path, embedded_dir: Path | None) -> Path:
    monkeypatch.setenv("SKETCHTUNE_CACHE", str(root))
    if embedded_dir is not None:  # the converted embedded model, not converted again
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "models" / embedded_dir.name).symlink_to(embedded_dir)
    return root


def run_math(capsys, model: str, out: Path, *extra):
    return run_cli(capsys, "run", "--config", "math", f"model.name={model}", f"output_dir={out}", *SIZES, *CPU,
                   *extra, "--json")


def check_recipe_runs_from_urls(capsys, monkeypatch, tmp_path, mirror, model: str, embedded_dir: Path | None):
    srv, files = mirror
    use_cache(monkeypatch, tmp_path / "cache", embedded_dir)

    code, stdout, err = run_math(capsys, model, tmp_path / "a")
    assert code == 0, err
    assert [(r["stage"], r["status"]) for r in json.loads(stdout)] == [
        ("compress", "ran"), ("finetune", "ran"), ("eval", "ran"), ("export", "ran")]
    # every file fetched exactly once (Math10K serves both calibration and training)
    assert dict(srv.requests) == {f"/{p}": 1 for p in files}
    train_sha = hashlib.sha256(files[TRAIN]).hexdigest()
    source = read_manifest(tmp_path / "a" / "finetune").results["data"]["source"]
    assert source["sha256"] == train_sha and source["verified"] is True
    assert source["path"] == f"{llm_adapters.PUBLIC_BASE}/{TRAIN}"  # as the bundled config names it
    ev = read_manifest(tmp_path / "a" / "eval")
    assert set(ev.config["data_files"]) == set(GROUPS["st_math"])
    for task, info in ev.config["data_files"].items():
        assert info["sha256"] == hashlib.sha256(files[repo_test_file(task)]).hexdigest()
    assert set(ev.results["models"][0]["scores"]) >= set(GROUPS["st_math"])
    calibration = read_manifest(tmp_path / "a" / "compress").results["calibration"]
    assert calibration["source"] == f"{llm_adapters.PUBLIC_BASE}/{TRAIN}"
    assert calibration["fetched"]["sha256"] == train_sha and calibration["fetched"]["verified"] is True

    # a second run (a fresh output directory: every stage reads its inputs again) fetches nothing
    code, stdout, err = run_math(capsys, model, tmp_path / "b")
    assert code == 0, err
    assert [r["status"] for r in json.loads(stdout)] == ["ran"] * 4
    assert srv.total == len(files)

    # a mirror serving other bytes than the pinned ones: refused in one line, exit 2, nothing written
    srv.files[f"/{TRAIN}"] = files[TRAIN].replace(b"answer", b"ANSWER")
    use_cache(monkeypatch, tmp_path / "cache2", embedded_dir)
    code, stdout, err = run_math(capsys, model, tmp_path / "c")
    assert code == 2 and stdout == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    # the preflight reports it once per use: calibration and training both read Math10K
    assert len(errors) == 2, err
    assert all("refusing" in e and "math_10k.json" in e and "sha256" in e for e in errors), err
    assert not (tmp_path / "c" / "compress").exists() and not (tmp_path / "c" / "compress.partial").exists()
    assert not any((tmp_path / "cache2").rglob("math_10k.json"))


def test_math_recipe_from_urls_tiny_model(capsys, monkeypatch, tmp_path, mirror, one_thread):
    """The whole flow with a tiny random Llama (fast: the default suite)."""
    model = save_tiny_model(tmp_path / "tiny")
    check_recipe_runs_from_urls(capsys, monkeypatch, tmp_path, mirror, str(model), None)


@pytest.mark.slow
@pytest.mark.embedded
def test_math_recipe_from_urls_smollm2(capsys, monkeypatch, tmp_path, mirror, embedded_dir, one_thread):
    """The issue's exact command: model.name=smollm2-135m (compress alone takes minutes on 2 CPU cores)."""
    check_recipe_runs_from_urls(capsys, monkeypatch, tmp_path, mirror, "smollm2-135m", embedded_dir)
    shutil.rmtree(tmp_path / "a", ignore_errors=True)
