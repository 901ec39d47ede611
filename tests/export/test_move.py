"""Artifacts that move: a manifest names its parent by a path relative to itself (plus where it was, plus
its content hash), so a runs tree moved or copied as a whole keeps eval and export working; a base sketch
moved on its own is re-pointed with --base, accepted only when its content hash matches."""
from __future__ import annotations

import json
import shutil

import pytest

from artifacts_export import tiny_tokenizer, write_finetune_artifact, write_sketch_artifact
from helpers import run_cli, tiny_llama
from sketchtune_cli.artifacts import MANIFEST, read_manifest


@pytest.fixture
def runs(tmp_path):
    """runs/a/{compress,finetune} of a tiny random Llama, and a demo_arith eval data dir beside runs/."""
    from sketchtune_cli.finetune.demo_data import demo_records

    sketch = write_sketch_artifact(tmp_path / "runs" / "a" / "compress", tiny_llama(seed=0), tiny_tokenizer(), "tiny")
    write_finetune_artifact(tmp_path / "runs" / "a" / "finetune", sketch)
    data = tmp_path / "data" / "demo_arith" / "test.json"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(demo_records("test", n=2, seed=0)))
    return tmp_path / "runs"


def evaluate(capsys, artifact, data_dir, out, *extra):
    return run_cli(capsys, "eval", str(artifact), "--tasks", "demo_arith", "--data-dir", str(data_dir),
                   "--limit", "2", "--batch-size", "2", "--max-new-tokens", "2", "-o", str(out), *extra)


def test_manifest_names_parent_relative_to_itself(runs):
    parent = read_manifest(runs / "a" / "finetune").parent
    assert parent["relative_path"] == "../compress"
    assert parent["path"] == str((runs / "a" / "compress").resolve())  # older readers still find it in place


def test_moved_and_copied_runs_tree_keeps_working(runs, tmp_path, capsys):
    shutil.move(runs / "a", runs / "b")  # mv runs/a runs/b: the absolute path recorded is gone
    code, out, err = evaluate(capsys, runs / "b" / "finetune", runs.parent / "data", tmp_path / "eval-b")
    assert code == 0, err
    code, out, err = run_cli(capsys, "export", str(runs / "b" / "finetune"), "-o", str(tmp_path / "exp-b"))
    assert code == 0, err
    assert read_manifest(tmp_path / "exp-b").results["base_sketch"]["path"] == str((runs / "b" / "compress").resolve())

    # a copy to another folder, the original then removed: the copy reads its own copied base
    shutil.copytree(runs / "b", tmp_path / "elsewhere" / "c")
    shutil.rmtree(runs / "b")
    code, out, err = run_cli(capsys, "export", str(tmp_path / "elsewhere" / "c" / "finetune"), "-o",
                             str(tmp_path / "exp-c"), "-f", "lut-only")
    assert code == 0, err
    code, out, err = evaluate(capsys, tmp_path / "exp-c", runs.parent / "data", tmp_path / "eval-c")
    assert code == 0, err  # the lut-only export finds its base relative to itself too


def test_base_moved_alone_needs_base_flag_and_the_right_one(runs, tmp_path, capsys):
    finetune = runs / "a" / "finetune"
    shutil.move(runs / "a" / "compress", tmp_path / "sketches" / "tiny")

    code, _, err = run_cli(capsys, "export", str(finetune), "-o", str(tmp_path / "x"))
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 1
    assert "base sketch is gone" in lines[0] and str(runs / "a" / "compress") in lines[0] and "--base" in lines[0]

    code, _, err = run_cli(capsys, "export", str(finetune), "-o", str(tmp_path / "x"), "--base",
                           str(tmp_path / "sketches" / "tiny"))
    assert code == 0, err
    code, _, err = evaluate(capsys, finetune, runs.parent / "data", tmp_path / "e", "--base",
                            str(tmp_path / "sketches" / "tiny"))
    assert code == 0, err

    other = write_sketch_artifact(tmp_path / "sketches" / "other", tiny_llama(seed=1), tiny_tokenizer(), "tiny")
    for argv in (["export", str(finetune), "-o", str(tmp_path / "y")],
                 ["eval", str(finetune), "--tasks", "demo_arith", "--data-dir", str(runs.parent / "data"),
                  "-o", str(tmp_path / "y")]):
        code, _, err = run_cli(capsys, *argv, "--base", str(other.path))
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert code == 2 and len(lines) == 1 and "content hashes differ" in lines[0], err
        assert not (tmp_path / "y").exists()


def test_old_manifests_with_absolute_parent_paths(runs, tmp_path, capsys):
    """Manifests written before relative paths (parent = absolute path only) still resolve in place."""
    manifest = runs / "a" / "finetune" / MANIFEST
    data = json.loads(manifest.read_text())
    data["parent"].pop("relative_path")
    data.pop("seal")  # such manifests were format 1: unsealed
    data["format"] = data["format"].rsplit("/", 1)[0] + "/1"
    manifest.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "export", str(runs / "a" / "finetune"), "-o", str(tmp_path / "x"), "-f", "lut-only")
    assert code == 0, err
