"""The memory plan of compress's LUT distillation (estimate.distill_memory_plan, issue 18): its parts against
figures computed here by hand from Llama-3-8B's published shape, the fit verdict and the lower-memory
settings it offers, and what `inspect --estimate` and `run --dry-run` print of it."""
from __future__ import annotations

import json

from helpers import estimate_for_spec, run_cli

from sketchtune_cli.estimate import DISTILL_GPU_BYTES, distill_memory_plan
from sketchtune_cli.models import load_model_config

# Llama-3-8B: 32 blocks, hidden 4096, MLP 14336, 8 KV heads of 128, vocabulary 128256, untied head.
HIDDEN, INTER, KV, VOCAB, BLOCKS = 4096, 14336, 1024, 128256, 32
BLOCK_WEIGHTS = 2 * HIDDEN * HIDDEN + 2 * KV * HIDDEN + 3 * HIDDEN * INTER
PARAMS = BLOCKS * (BLOCK_WEIGHTS + 2 * HIDDEN) + 2 * VOCAB * HIDDEN + HIDDEN  # + norms, embeddings, head


def test_parts_of_distilling_llama_3_8b_match_a_hand_count():
    assert PARAMS == 8_030_261_248  # the published parameter count
    cfg = load_model_config("llama-3-8b")
    est = estimate_for_spec("llama-3-8b", 4, 4)
    plan = distill_memory_plan(est, cfg, micro_batch=2, seq_len=2048, checkpointing=False)
    parts = plan["configured"]
    assert parts["teacher"] == 2 * PARAMS  # bf16 teacher
    rows = BLOCKS * (2 * HIDDEN + 2 * KV + 2 * INTER + HIDDEN)  # output rows of the 7 sketched linears
    luts = rows * 4 * 16
    codes = BLOCKS * BLOCK_WEIGHTS // 2  # 4 bits per weight
    dense = 2 * (PARAMS - BLOCKS * BLOCK_WEIGHTS)  # embeddings, head, norms in bf16
    assert parts["student"] == codes + 4 * luts + dense  # the distillation trains fp32 LUTs
    assert parts["lut_grads_and_adam"] == 3 * 4 * luts
    assert parts["logits"] == 2 * 2048 * VOCAB * 32  # the KL's ~8 fp32 copies at every position
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert plan["fits"] and plan["fits_with"] == [] and plan["device_bytes"] == DISTILL_GPU_BYTES == 80e9


def test_a_plan_that_does_not_fit_names_settings_that_do():
    cfg, est = load_model_config("llama-3-8b"), estimate_for_spec("llama-3-8b", 3, 1)
    plan = distill_memory_plan(est, cfg, micro_batch=8, seq_len=2048, checkpointing=False)
    assert not plan["fits"] and plan["configured"]["total"] > 80e9
    assert plan["fits_with"], plan
    for option in plan["fits_with"]:
        mb = option["compress.distill_micro_batch_size"]
        ckpt = option["compress.distill_gradient_checkpointing"]
        again = distill_memory_plan(est, cfg, mb, 2048, ckpt)
        assert again["fits"] and again["configured"]["total"] == option["total"] <= 80e9
    # checkpointing keeps one hidden state per block instead of every block's working set: less memory
    ckpt = distill_memory_plan(est, cfg, 8, 2048, True)["configured"]
    assert ckpt["activations"] < plan["configured"]["activations"]
    # a device smaller than teacher + student: nothing fits, and the plan says so
    small = distill_memory_plan(est, cfg, 1, 2048, True, device_bytes=10 * 10**9)
    assert not small["fits"] and small["fits_with"] == []


def test_inspect_estimate_and_dry_run_print_the_distillation_memory(capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "inspect", "--estimate", "llama-3-8b", "--json")
    assert code == 0, err
    plan = json.loads(stdout)["distill_memory"]
    assert plan["fits"] and plan["configured"]["logits"] == 2 * 2048 * VOCAB * 32
    code, stdout, err = run_cli(capsys, "run", "--config", "demo", "--dry-run", "compress.distill_steps=10",
                                "compress.distill_micro_batch_size=4", "compress.distill_batch_size=8",
                                f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert "distill memory per device (predicted)" in err and "distill fits 80.00 GB" in err


def test_the_topk_teacher_is_offered_when_teacher_and_student_do_not_fit_together():
    """A 24 GB device: Llama-3-8B's bf16 teacher (16 GB) fits alone, not beside the student and the KL's
    logits at any micro-batch; the topk teacher's two phases (teacher pass, then the student alone) do."""
    cfg, est = load_model_config("llama-3-8b"), estimate_for_spec("llama-3-8b", 4, 4)
    device = 24 * 10**9
    plan = distill_memory_plan(est, cfg, 2, 2048, False, device_bytes=device)
    assert not plan["fits"] and plan["fits_with"], plan
    assert all(o["compress.distill_teacher"] == "topk" for o in plan["fits_with"])
    for option in plan["fits_with"]:
        again = distill_memory_plan(est, cfg, option["compress.distill_micro_batch_size"], 2048,
                                    option["compress.distill_gradient_checkpointing"], "topk", device_bytes=device)
        assert again["fits"] and option["total"] <= device
        phases = again["configured"], again["teacher_pass"]
        assert phases[0]["teacher"] == 0 and phases[1]["teacher"] == 2 * PARAMS
        assert option["total"] == max(p["total"] for p in phases)
    online = distill_memory_plan(est, cfg, 1, 2048, True, device_bytes=device)
    assert online["configured"]["total"] > device  # even the smallest online setting
