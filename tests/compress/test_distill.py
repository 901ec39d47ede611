"""compress's LUT distillation (compress/distill.py, issue 18): it lowers the KL to the dense model on the
calibration text, it records its loss curve, an interrupted distillation resumes to the very bytes of an
uninterrupted one, and the result fine-tunes like any sketch."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from compress.conftest import save_tiny_model
from finetune.ft_helpers import FAST
from helpers import hook_env
from sketchtune_cli.artifacts import partial_dir, read_manifest
from sketchtune_cli.compress.calibration import load_calibration
from sketchtune_cli.models import load_model
from sketchtune_cli.preemption import EXIT_INTERRUPTED
from sketchtune_cli.sketch import load_sketch

ARGS = ["--calib", "builtin", "-n", "8", "--seq-len", "32", "--device", "cpu", "--bits", "2", "-g", "2",
        "compress.kmeans_iters=10", "compress.lut_refit_rounds=0", "compress.distill_batch_size=4",
        "compress.distill_micro_batch_size=2", "compress.distill_warmup_steps=0", "compress.distill_lr=3e-4"]


def _kl_to_dense(model_dir, sketch_dir) -> float:
    """Mean next-token KL(dense || sketch) over the calibration sequences, computed here independently."""
    dense, tokenizer = load_model(str(model_dir), dtype="float32", device="cpu")
    sketch = load_sketch(sketch_dir)
    ids = load_calibration("builtin", tokenizer, 8, 32, 0).input_ids
    with torch.no_grad():
        p = F.log_softmax(dense(ids).logits[:, :-1].float(), -1)
        q = F.log_softmax(sketch(ids).logits[:, :-1].float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _compress(model, out, *args, env=None):
    return subprocess.run([sys.executable, "-m", "sketchtune_cli", "compress", str(model), "-o", str(out), *ARGS, *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


def test_distillation_lowers_the_kl_to_the_dense_model_and_records_its_curve(tiny_model_dir, tmp_path, run_cli):
    plain, distilled = tmp_path / "plain", tmp_path / "distilled"
    assert run_cli("compress", tiny_model_dir, "-o", plain, *ARGS)[0] == 0
    code, _, err = run_cli("compress", tiny_model_dir, "-o", distilled, "--distill-steps", "12", *ARGS)
    assert code == 0, err
    results = read_manifest(distilled).results["distill"]
    assert results["steps"] == 12 and len(results["loss_curve"]) == 12
    assert results["final_loss"] < results["first_loss"]
    assert _kl_to_dense(tiny_model_dir, distilled) < 0.8 * _kl_to_dense(tiny_model_dir, plain)
    # the codes are the layer-wise build's: only LUT values moved
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(distilled / "model.safetensors"))
    codes = [k for k in a if k.endswith(".codes")]
    assert codes and all(torch.equal(a[k], b[k]) for k in codes)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith(".lut"))
    assert not (distilled / "distill").exists()


def test_interrupted_distillation_resumes_to_the_same_bytes(tmp_path, run_cli):
    model = save_tiny_model(tmp_path / "tiny", num_hidden_layers=2)
    reference, out = tmp_path / "ref", tmp_path / "out"
    assert _compress(model, reference, "--distill-steps", "6").returncode == 0
    stopped = _compress(model, out, "--distill-steps", "6", env=hook_env("distill:3:signal:SIGUSR1"))
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr
    assert (partial_dir(out) / "distill").is_dir() and not out.exists()
    code, _, err = run_cli("compress", model, "-o", out, "--resume", "--distill-steps", "6", *ARGS)
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_a_distilled_sketch_fine_tunes_unchanged(tmp_path, run_cli):
    """The finetune tests' recipe (real tokenizer, demo data) on a distilled sketch of a tiny dense model."""
    from helpers import tiny_llama
    from sketchtune_cli.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    dense = tmp_path / "dense"
    tiny_llama(0, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
               vocab_size=len(tokenizer), max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id).save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    sketch = tmp_path / "sketch"
    code, _, err = run_cli("compress", dense, "-o", sketch, "--distill-steps", "2", *ARGS)
    assert code == 0, err
    code, _, err = run_cli("finetune", "--base", sketch, "-o", tmp_path / "ft", *FAST)
    assert code == 0, err
    assert read_manifest(tmp_path / "ft").results["steps"] == 6


def _teacher_and_perturbed_student(model_dir):
    """The tiny model as teacher, and a copy with every weight nudged (seed 0) as the student."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return teacher, student


def test_teacher_kl_at_target_columns_equals_the_full_kl(tiny_model_dir):
    """TeacherKL on the kept columns against an independent KL over every position's logits, masked."""
    from sketchtune_cli.compress.distill import TeacherKL
    from sketchtune_cli.training.trainer import forward_targets

    teacher, student = _teacher_and_perturbed_student(tiny_model_dir)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    labels = ids.clone()
    labels[0, :7] = -100  # prompt tokens of row 0 carry no loss
    labels[1, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        logits, b = forward_targets(student, batch)
        got = TeacherKL(teacher)(logits, b)
        p_log = F.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)
        q_log = F.log_softmax(student(input_ids=ids).logits[:, :-1].float(), -1)
        want = ((p_log.exp() * (p_log - q_log)).sum(-1) * (labels[:, 1:] != -100)).sum()
    assert logits.shape[1] == 8  # columns 3..10: row 1's targets start at token 4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_coarse_kl_is_the_full_kl_over_all_tokens_and_a_lower_bound_over_fewer():
    """The top-k teacher's loss against an independent KL: equal when the kept tokens are all of them,
    between 0 and the full KL (coarse-graining never raises a KL) when they are a few."""
    from sketchtune_cli.compress.distill import coarse_kl, coarse_log_probs

    torch.manual_seed(0)
    teacher, student = torch.randn(3, 5, 50), torch.randn(3, 5, 50, requires_grad=True)
    p, q = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
    full = (p.exp() * (p - q)).sum(-1)
    for k, exact in ((50, True), (4, False)):
        index = teacher.topk(k, -1).indices
        kl = coarse_kl(*coarse_log_probs(teacher, index), *coarse_log_probs(student, index))
        if exact:
            torch.testing.assert_close(kl, full, rtol=1e-5, atol=1e-6)
            # the empty rest bucket leaves the gradient the full KL's, with no NaN
            got = torch.autograd.grad(kl.sum(), student)[0]
            torch.testing.assert_close(got, torch.autograd.grad(full.sum(), student)[0], rtol=1e-5, atol=1e-7)
        else:
            kl, full = kl.detach(), full.detach()
            assert (kl >= -1e-6).all() and (kl <= full + 1e-6).all() and (kl < full - 1e-3).any()
            # by hand for one position: the kept tokens, then everything else as one bucket
            pk, qk = p[0, 0].exp()[index[0, 0]], q[0, 0].detach().exp()[index[0, 0]]
            by_hand = (pk * (pk / qk).log()).sum() + (1 - pk.sum()) * ((1 - pk.sum()) / (1 - qk.sum())).log()
            torch.testing.assert_close(kl[0, 0], by_hand, rtol=1e-4, atol=1e-6)


def test_topk_teacher_over_the_whole_vocabulary_gives_the_online_loss(tiny_model_dir):
    """TopKTeacherKL from a teacher pass that keeps every token equals TeacherKL on the same batch, rows found
    by their tokens whatever their order in the batch."""
    from sketchtune_cli.compress.distill import TeacherKL, TopKTeacherKL, teacher_topk
    from sketchtune_cli.training.trainer import forward_targets

    teacher, student = _teacher_and_perturbed_student(tiny_model_dir)
    calib = torch.randint(0, teacher.config.vocab_size, (3, 10))
    targets = teacher_topk(teacher, calib, teacher.config.vocab_size, micro_batch=2)
    assert targets["index"].shape == (3, 9, teacher.config.vocab_size) and targets["log_p_rest"].shape == (3, 9)
    ids = calib[[2, 0]]  # a batch of calibration rows 2 and 0
    labels = ids.clone()
    labels[0, :5] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        logits, b = forward_targets(student, batch)
        torch.testing.assert_close(TopKTeacherKL(targets, calib)(logits, b), TeacherKL(teacher)(logits, b),
                                   rtol=1e-5, atol=1e-5)


def test_topk_teacher_distillation_lowers_the_kl_and_leaves_no_targets_behind(tiny_model_dir, tmp_path, run_cli):
    plain, distilled = tmp_path / "plain", tmp_path / "topk"
    assert run_cli("compress", tiny_model_dir, "-o", plain, *ARGS)[0] == 0
    code, _, err = run_cli("compress", tiny_model_dir, "-o", distilled, "--distill-steps", "12", *ARGS,
                           "compress.distill_teacher=topk", "compress.distill_topk=8")
    assert code == 0, err
    assert read_manifest(distilled).config["compress"]["distill_teacher"] == "topk"
    assert _kl_to_dense(tiny_model_dir, distilled) < 0.8 * _kl_to_dense(tiny_model_dir, plain)
    assert not (distilled / "distill").exists() and not partial_dir(distilled).exists()
