"""Artifacts: atomic write, manifest contents, checksum verification, version/stage refusal."""
import json

import pytest

from sketchtune_cli.artifacts import MANIFEST, content_hash, partial_dir, read_manifest, sha256_file, write_artifact
from sketchtune_cli.errors import UserError


def make(tmp_path, name="a", stage="sketch", parent=None, **kw):
    out = tmp_path / name
    with write_artifact(out, stage, {"x": 1}, parent=parent, **kw) as w:
        (w.path / "weights.bin").write_bytes(b"abc")
        (w.path / "sub").mkdir()
        (w.path / "sub" / "f.txt").write_text("hi")
        w.results["loss"] = 0.5
    return out


def test_manifest_has_everything(tmp_path):
    out = make(tmp_path)
    data = json.loads((out / MANIFEST).read_text())
    assert data["format"] == "sketchtune.sketch/1" and data["stage"] == "sketch"
    assert data["config"] == {"x": 1} and data["results"] == {"loss": 0.5}
    assert set(data["files"]) == {"weights.bin", "sub/f.txt"}
    assert data["files"]["weights.bin"] == sha256_file(out / "weights.bin")
    assert data["content_hash"] == content_hash(data["files"])
    assert not partial_dir(out).exists()


def test_parent_reference_and_lineage(tmp_path):
    parent = read_manifest(make(tmp_path, "p"))
    child = read_manifest(make(tmp_path, "c", stage="finetune", parent=parent))
    assert child.parent["content_hash"] == parent.content_hash and child.parent["stage"] == "sketch"


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with write_artifact(tmp_path / "a", "sketch", {}) as w:
            (w.path / "half").write_text("x")
            raise RuntimeError("crash")
    assert not (tmp_path / "a").exists() and not partial_dir(tmp_path / "a").exists()


def test_refuses_to_overwrite_without_flag(tmp_path):
    out = make(tmp_path)
    before = (out / MANIFEST).read_text()
    with pytest.raises(UserError, match="--overwrite"):
        make(tmp_path)
    assert (out / MANIFEST).read_text() == before
    make(tmp_path, overwrite=True)
    read_manifest(out)


def test_checksum_mismatch_and_missing_file(tmp_path):
    out = make(tmp_path)
    (out / "weights.bin").write_bytes(b"abd")
    with pytest.raises(UserError, match="checksum mismatch for weights.bin"):
        read_manifest(out)
    (out / "weights.bin").unlink()
    with pytest.raises(UserError, match="missing"):
        read_manifest(out)


def test_refuses_newer_major_and_wrong_stage(tmp_path):
    out = make(tmp_path)
    with pytest.raises(UserError, match="is a sketch artifact, expected finetune"):
        read_manifest(out, stage="finetune")
    data = json.loads((out / MANIFEST).read_text())
    data["format"] = "sketchtune.sketch/2"
    (out / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(UserError, match="newer than this sketchtune"):
        read_manifest(out)


def test_not_an_artifact(tmp_path):
    with pytest.raises(UserError, match="not a sketchtune artifact"):
        read_manifest(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        read_manifest(tmp_path / "nope")


def test_interrupted_run_needs_resume(tmp_path):
    partial_dir(tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="--resume"):
        make(tmp_path)
    make(tmp_path, resume=True)
