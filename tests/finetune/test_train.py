"""Training on a tiny random sketch: only LUTs train, loss falls, adapters reload exactly, gradient
checkpointing is exact, and bad input fails with one line without losing anything."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from ft_helpers import FAST, run_cli
from safetensors.torch import load_file, save_file

from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.config import load_config
from sketchtune_cli.finetune.data import build_datasets
from sketchtune_cli.training.batches import collate
from sketchtune_cli.training.trainer import (
    Trainer, aligned_loss_sum, enable_gradient_checkpointing, forward_targets, make_accelerator,
    trainable_luts,
)
from sketchtune_cli.loading import LUT_ADAPTER, apply_lut_file, load_any, load_sketch_artifact


def _tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# the `trained` run's recipe: 8 steps on 8 demo records, eval every 4 (resume tests repeat it exactly)
TRAINED = [*FAST, "data.limit=8", "train.max_steps=8", "train.lr=5e-2", "data.val_path=demo", "data.val_limit=4",
           "train.eval_every=4"]


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """One CLI run: 8 steps on 8 demo records (memorisable, so the loss must fall), with eval."""
    out = tmp_path_factory.mktemp("ft") / "run"
    code, stdout, stderr = run_cli(
        "finetune", "--base", str(tiny_base), "-o", str(out), *TRAINED, "logging.plots=true",
    )
    assert code == 0, stderr
    return out, stdout, stderr


def _one_batch(base, n=2):
    cfg = load_config(None, FAST)
    model, tok, _ = load_sketch_artifact(base, dtype=torch.float32)
    data = build_datasets(cfg.data, tok)
    return model, tok, data, collate(data.train[:n], tok.pad_token_id)


def test_cli_writes_artifact_and_loss_falls(trained, tiny_base):
    out, stdout, stderr = trained
    assert stdout.strip() == str(out)  # only the path on stdout
    assert "step 8/8" in stderr and "tok/s" in stderr and "ETA" in stderr
    m = read_manifest(out, stage="finetune")
    base = read_manifest(tiny_base)
    assert m.parent["content_hash"] == base.content_hash
    assert m.config["train"]["base"] == str(tiny_base.resolve())
    assert LUT_ADAPTER in m.files and not any(f.startswith("checkpoints/") for f in m.files)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05
    assert any("eval_loss" in r for r in recs) and m.results["eval_loss"] is not None
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert m.results["trainable_params"] == sum(t.numel() for t in load_file(str(out / LUT_ADAPTER)).values())


def test_only_luts_change(trained, tiny_base):
    out, _, _ = trained
    ft = load_any(out, dtype=torch.float32).model.state_dict()
    base = load_any(tiny_base, dtype=torch.float32).model.state_dict()
    assert ft.keys() == base.keys()
    changed = {k for k in ft if not torch.equal(ft[k], base[k])}
    luts = {k for k in ft if k.endswith(".lut")}
    assert changed == luts  # every LUT moved; codes, norms, embeddings, lm_head are bit-identical


def test_adapter_equals_final_checkpoint(trained):
    out, _, _ = trained
    final = sorted((out / "checkpoints").glob("step-*"))[-1]
    a, b = load_file(str(out / LUT_ADAPTER)), load_file(str(final / "luts.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trained_luts_reload_to_identical_logits(tiny_base, tmp_path):
    cfg = load_config(None, FAST + ["train.max_steps=2"])
    model, tok, data, batch = _one_batch(tiny_base)
    trainer = Trainer(make_accelerator(cfg.train, tmp_path / "logs"), model, tok, data, cfg.train, tmp_path, "fp")
    trainer.run()
    save_file(trainer.lut_tensors(), str(tmp_path / LUT_ADAPTER))
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fresh, _, _ = load_sketch_artifact(tiny_base, dtype=torch.float32)
        apply_lut_file(fresh, tmp_path / LUT_ADAPTER)
        got = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(got, ref)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference loss: summed next-token cross entropy over response tokens (fp32), from the logits of
    every position (the trainer keeps only the target columns' logits, see forward_targets)."""
    return aligned_loss_sum(logits[:, :-1], labels[:, 1:])


def test_logits_at_target_columns_give_the_full_logits_loss_and_grads(tiny_base):
    """The trainer's forward keeps logits only where a response token is predicted: same loss and LUT
    gradients as the loss over every position's logits (the reference), fewer logits."""
    model, _, _, batch = _one_batch(tiny_base, n=3)
    luts = trainable_luts(model)
    full = token_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                          batch["labels"])
    full.backward()
    ref = {n: p.grad.clone() for n, p in luts.items()}
    model.zero_grad(set_to_none=True)
    logits, b = forward_targets(model, batch)
    kept = aligned_loss_sum(logits, b["targets"])
    kept.backward()
    assert logits.shape[1] < batch["input_ids"].shape[1] - 1  # prompt positions dropped
    assert int((b["targets"] != -100).sum()) == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-4)
    for n, g in ref.items():
        torch.testing.assert_close(luts[n].grad, g, rtol=1e-4, atol=1e-6)


def _lut_grads(base, checkpointing: str | None) -> tuple[dict, set]:
    model, _, _, batch = _one_batch(base)
    luts = trainable_luts(model)
    if checkpointing == "ours":
        enable_gradient_checkpointing(model)
    elif checkpointing == "reentrant":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    model.train()
    loss = token_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if checkpointing:
        assert model.is_activation_checkpointing
    return {n: p.grad.clone() for n, p in luts.items()}, trainable


def test_gradient_checkpointing_gives_the_same_grads(tiny_base):
    plain, trainable = _lut_grads(tiny_base, None)
    assert trainable == set(plain) and all(n.endswith(".lut") for n in trainable)
    assert all(g.abs().sum() > 0 for g in plain.values())
    for mode in ("ours", "reentrant"):
        ckpt, _ = _lut_grads(tiny_base, mode)
        for n in plain:
            torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-7)


# ---- bad input: one line, exit 2, nothing lost --------------------------------------------------------

def _one_line_error(code, stderr):
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr
    return errors[0]


def test_unknown_config_key(tiny_base, tmp_path):
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(tmp_path / "x"), *FAST, "train.lrr=1")
    assert "train.lrr" in _one_line_error(code, err) and not (tmp_path / "x").exists()


def test_base_must_be_a_sketch(trained, tmp_path):
    out, _, _ = trained
    code, _, err = run_cli("finetune", "--base", str(out), "-o", str(tmp_path / "x"), *FAST)
    assert "finetune artifact, expected sketch" in _one_line_error(code, err)
    code, _, err = run_cli("finetune", "--base", str(tmp_path), "-o", str(tmp_path / "x"), *FAST)
    assert "not a sketchtune artifact" in _one_line_error(code, err)
    assert not (tmp_path / "x").exists() and not partial_dir(tmp_path / "x").exists()


def test_existing_output_is_kept(trained, tiny_base):
    out, _, _ = trained
    before = _tree_digest(out)
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(out), *FAST)
    assert "--overwrite" in _one_line_error(code, err)
    assert _tree_digest(out) == before


def test_resume_checks_config_and_finishes(trained, tiny_base, tmp_path):
    """An interrupted run (here: the finished run's checkpoints in OUT.partial) resumes only with its config."""
    out, _, _ = trained
    target = tmp_path / "again"
    shutil.copytree(out / "checkpoints", partial_dir(target) / "checkpoints")
    shutil.copy(out / "metrics.jsonl", partial_dir(target) / "metrics.jsonl")
    before = _tree_digest(partial_dir(target))
    same = ["finetune", "--base", str(tiny_base), "-o", str(target), *TRAINED]
    code, _, err = run_cli(*same)  # no --resume: refuse to touch it
    assert "--resume" in _one_line_error(code, err)
    code, _, err = run_cli(*same, "--resume", "train.lr=1e-3")
    assert "cannot resume" in _one_line_error(code, err)
    assert _tree_digest(partial_dir(target)) == before
    code, _, err = run_cli(*same, "--resume", "train.log_every=2")  # bookkeeping keys may change
    assert code == 0, err
    a, b = load_file(str(out / LUT_ADAPTER)), load_file(str(target / LUT_ADAPTER))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_the_base_moved(trained, tiny_base, tmp_path):
    """The resume fingerprint pins the base by content hash, not by path: a runs tree that moved resumes."""
    out, _, _ = trained
    moved_base = tmp_path / "moved" / "compress"
    shutil.copytree(tiny_base, moved_base)
    target = tmp_path / "moved" / "finetune"
    shutil.copytree(out / "checkpoints", partial_dir(target) / "checkpoints")
    shutil.copy(out / "metrics.jsonl", partial_dir(target) / "metrics.jsonl")
    code, _, err = run_cli("finetune", "--base", str(moved_base), "-o", str(target), *TRAINED, "--resume")
    assert code == 0, err
    a, b = load_file(str(out / LUT_ADAPTER)), load_file(str(target / LUT_ADAPTER))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_checkpoints(tiny_base, tmp_path_factory):
    """The `trained` recipe checkpointing every 3 steps: steps 6 and 8 are kept."""
    out = tmp_path_factory.mktemp("ft2") / "run"
    code, _, stderr = run_cli(
        "finetune", "--base", str(tiny_base), "-o", str(out), *TRAINED, "train.save_every=3",
    )
    assert code == 0, stderr
    return out


@pytest.mark.parametrize("damage", ["truncate_luts", "break_state"])
def test_resume_falls_back_from_a_damaged_checkpoint(trained, two_checkpoints, tiny_base, tmp_path, damage):
    """The newest checkpoint cannot be read: one line says so, the previous one is used, and the final LUTs
    equal the straight run's."""
    out, _, _ = trained
    target = tmp_path / "again"
    shutil.copytree(two_checkpoints / "checkpoints", partial_dir(target) / "checkpoints")
    steps = sorted((partial_dir(target) / "checkpoints").glob("step-*"))
    assert len(steps) == 2
    newest = steps[-1]
    if damage == "truncate_luts":
        f = newest / "luts.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (newest / "state.json").write_text("{not json")
    same = ["finetune", "--base", str(tiny_base), "-o", str(target), *TRAINED, "--resume"]
    code, _, err = run_cli(*same)
    assert code == 0, err
    flat = " ".join(err.split())  # rich wraps long log lines at the terminal width
    assert flat.count("cannot read checkpoint") == 1 and f"{newest.name} (" in flat
    assert f"resumed from {steps[0].name}" in flat
    a, b = load_file(str(out / LUT_ADAPTER)), load_file(str(target / LUT_ADAPTER))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_no_readable_checkpoint_says_how_to_start_over(two_checkpoints, tiny_base, tmp_path):
    target = tmp_path / "again"
    shutil.copytree(two_checkpoints / "checkpoints", partial_dir(target) / "checkpoints")
    for ck in (partial_dir(target) / "checkpoints").glob("step-*"):
        (ck / "rng.safetensors").write_bytes(b"\0" * 7)
    before = _tree_digest(partial_dir(target))
    code, _, err = run_cli("finetune", "--base", str(tiny_base), "-o", str(target), *TRAINED, "--resume")
    msg = _one_line_error(code, err)
    assert "no readable checkpoint" in msg and "start over" in msg
    assert _tree_digest(partial_dir(target)) == before


def test_a_dry_run_reads_the_training_data_once(tmp_path, monkeypatch):
    """The finetune stage's check and plan both need the data's records: one read serves both within a
    preflight pass, and the next pass reads the (changed) file again."""
    import json

    from sketchtune_cli import preflight
    from sketchtune_cli.config import load_config
    from sketchtune_cli.finetune import interface
    from sketchtune_cli.finetune.data import data_problems
    from sketchtune_cli.stages import Job

    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(10)]))
    reads = []
    monkeypatch.setattr(interface, "data_problems", lambda data: reads.append(data.path) or data_problems(data))
    cfg = load_config("demo", overrides=[f"data.path={path}", "data.val_fraction=0.2"])
    checks = [(interface.STAGE, Job(tmp_path / "out", pending=True))]
    plans, _ = preflight.collect(checks, cfg)
    assert plans[0]["train_records"] == 8
    assert reads == [str(path)]
    path.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a"}] * 20))
    plans, _ = preflight.collect(checks, cfg)
    assert plans[0]["train_records"] == 16
    assert reads == [str(path)] * 2
