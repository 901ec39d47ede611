"""Artifacts: atomic write, manifest contents, checksum verification, version/stage refusal."""
import json
import os

import pytest

from sketchtune_cli.artifacts import FORMAT_MAJOR, MANIFEST, content_hash, partial_dir, read_manifest, sha256_file, write_artifact
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
    assert data["format"] == f"sketchtune.sketch/{FORMAT_MAJOR}" and data["stage"] == "sketch"
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
    data["format"] = f"sketchtune.sketch/{FORMAT_MAJOR + 1}"
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


# ---- seal -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda d: d["results"].__setitem__("loss", 0.6), "results.loss"),  # a digit in results
    (lambda d: d["config"].__setitem__("x", 2), "config.x"),
    (lambda d: d.__setitem__("created", "2020-01-01T00:00:00+00:00"), "created"),
    (lambda d: d["files"].__setitem__("weights.bin", "0" * 64), "files.weights.bin"),
    (lambda d: d["results"].__setitem__("extra", 1), "results.extra"),
    (lambda d: d.pop("parent"), "parent"),
    (lambda d: d.pop("seal"), "seal"),
])
def test_edited_manifest_is_refused_naming_the_field(tmp_path, edit, field):
    out = make(tmp_path)
    data = json.loads((out / MANIFEST).read_text())
    edit(data)
    (out / MANIFEST).write_text(json.dumps(data, indent=2))
    with pytest.raises(UserError, match=rf"(field {field} |no valid seal)") as err:
        read_manifest(out, verify=False)
    assert "\n" not in str(err.value)


def test_reformatting_the_manifest_is_not_an_edit(tmp_path):
    out = make(tmp_path)
    data = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps(dict(reversed(list(data.items()))), indent=4, sort_keys=True))
    assert read_manifest(out).results == {"loss": 0.5}


def test_unsealed_format_1_manifest_is_read_with_a_warning(tmp_path, caplog):
    out = make(tmp_path)
    data = json.loads((out / MANIFEST).read_text())
    data.pop("seal")
    data["format"] = "sketchtune.sketch/1"
    data["results"]["loss"] = 0.7  # cannot be detected: that is what the warning says
    (out / MANIFEST).write_text(json.dumps(data))
    assert read_manifest(out).results["loss"] == 0.7
    assert "unsealed" in caplog.text


# ---- lock -----------------------------------------------------------------------------------------------

def test_lock_is_held_while_writing_and_released(tmp_path):
    from sketchtune_cli.output_lock import OutputLocked, read_holder
    out = tmp_path / "a"
    with write_artifact(out, "sketch", {}) as w:
        holder = read_holder(w.path)
        assert holder.pid == os.getpid()
        with pytest.raises(OutputLocked, match=f"being written by a running sketchtune, pid {os.getpid()}") as e:
            write_artifact(out, "sketch", {}, resume=True).__enter__()
        assert "--resume" not in str(e.value)
        (w.path / "f").write_text("x")
    assert not (out / "lock").exists() and set(read_manifest(out).files) == {"f"}


def _fake_lock(partial, **kw):
    import socket
    rec = {"pid": 1, "host": socket.gethostname(), "process_start": 1.0, "started": "2026-01-01T00:00:00+00:00"}
    partial.mkdir()
    (partial / "lock").write_text(json.dumps(rec | kw))


def test_stale_lock_needs_resume_and_is_taken_over(tmp_path):
    out = tmp_path / "a"
    # pid 1 exists but started long after 1.0 (epoch): a reused pid, so the holder is dead
    _fake_lock(partial_dir(out))
    with pytest.raises(UserError, match="interrupted run left .*--resume"):
        make(tmp_path)
    assert (partial_dir(out) / "lock").exists()
    make(tmp_path, resume=True)
    read_manifest(out)


def test_a_stale_lock_replaced_while_judged_is_left_to_its_new_holder(tmp_path, monkeypatch):
    """Two --resume runs race for a dead run's lock: the one that loses must not delete the winner's lock
    (it removes only the holder it judged dead, not whatever the file holds by then)."""
    from sketchtune_cli.output_lock import Holder, OutputLocked, acquire, read_holder

    partial = partial_dir(tmp_path / "a")
    _fake_lock(partial)  # a dead holder
    winner = {"pid": os.getpid(), "process_start": None, "started": "2026-01-02T00:00:00+00:00"}
    judge = Holder.alive

    def alive_then_overtaken(holder):
        verdict = judge(holder)
        if holder.pid == 1:  # while this run judges the dead holder, the other run takes the lock over
            (partial / "lock").write_text(json.dumps(json.loads((partial / "lock").read_text()) | winner))
        return verdict

    monkeypatch.setattr(Holder, "alive", alive_then_overtaken)
    with pytest.raises(OutputLocked, match=f"being written by a running sketchtune, pid {os.getpid()}"):
        acquire(partial, tmp_path / "a", take_stale=True)
    assert read_holder(partial).started == winner["started"]


def test_lock_from_another_host_is_reported_by_name(tmp_path):
    out = tmp_path / "a"
    _fake_lock(partial_dir(out), host="gpu-node-17", pid=4242)
    for resume in (False, True):
        with pytest.raises(UserError, match="locked by pid 4242 on host gpu-node-17.*delete .*lock"):
            make(tmp_path, resume=resume)
    assert (partial_dir(out) / "lock").exists()


def test_dead_holder_of_our_own_launch_is_stale(tmp_path, monkeypatch):
    """A relaunched torchrun job has the same rendezvous address as the killed one: its dead rank 0's lock
    must still count as stale, while a live one of the same launch is left alone."""
    from sketchtune_cli.output_lock import refuse_if_held
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    job = "127.0.0.1:29500:"
    _fake_lock(partial_dir(tmp_path / "a"), job=job)  # pid 1 with a wrong start time: dead
    assert refuse_if_held(partial_dir(tmp_path / "a"), tmp_path / "a") is True
    _fake_lock(partial_dir(tmp_path / "b"), job=job, pid=os.getpid(), process_start=None)
    assert refuse_if_held(partial_dir(tmp_path / "b"), tmp_path / "b") is False
