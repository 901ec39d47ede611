"""scripts/bench_adapt.py's cheap parts: the data mix (deterministic, de-duplicated, validation never trained on),
resume (finished cells are skipped, other settings refused), the LR choice, the seed aggregation against a hand
computation, and the trainable-parameter match of LoRA ranks to the sketch's LUT counts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import load_script

ba = load_script("bench_adapt")


def _key(r: dict) -> tuple:
    return (r["instruction"], r["input"], r["output"])


@pytest.fixture()
def tiny_data(tmp_path):
    """Four train files of 30 records each, one record repeated across two files."""
    for j, folder in enumerate(ba.TRAIN_FOLDERS):
        recs = [{"instruction": f"{folder} q{i}", "input": "", "output": f"the correct answer is a{i}", "answer": f"a{i}"}
                for i in range(30)]
        if j == 1:
            recs.append({"instruction": "boolq q0", "input": "", "output": "the correct answer is a0", "answer": "a0"})
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.json").write_text(json.dumps(recs))
    return tmp_path


def test_mix_is_deterministic_deduplicated_and_disjoint_from_validation(tiny_data):
    a, b = ba.mixed_records(tiny_data), ba.mixed_records(tiny_data)
    assert a == b and len(a) == 120  # 121 records, one duplicate dropped
    assert sorted(r["task"] for r in a) == sorted(f for f in ba.TRAIN_FOLDERS for _ in range(30))
    assert [r["task"] for r in a[:8]] != ["boolq"] * 8  # shuffled, not file order
    val_keys = {_key(r) for r in a[:16]}
    for seed in (0, 1):
        train, val = ba.split(a, 16, 50, seed)
        assert val == a[:16] and len(train) == 50
        assert not val_keys & {_key(r) for r in train}
        assert train == ba.split(a, 16, 50, seed)[0]  # same seed, same records
    assert ba.split(a, 16, 50, 0)[0] != ba.split(a, 16, 50, 1)[0]  # seeds differ in order
    long, _ = ba.split(a, 16, 250, 0)  # more than the 104-record pool: further reshuffled passes, still no val
    assert len(long) == 250 and not val_keys & {_key(r) for r in long}
    assert long[:104] == ba.split(a, 16, 104, 0)[0]


def test_real_mix_counts(data_dir):
    recs = ba.mixed_records(data_dir)
    assert len(recs) == 17748  # 9427 + 2251 + 1119 + 4957 minus 6 duplicates
    train, val = ba.split(recs, 128, 1200, 0)
    assert not {_key(r) for r in val} & {_key(r) for r in train}


def _fake_result(cell: str, s) -> dict:
    method, kind, seed, lr = ba.parse_cell(cell)
    r = {"cell": cell, "method": method.name, "kind": kind, "seed": seed, "settings_key": s.key(),
         "trainable_params": 10, "lora_rank": None, "base_bytes_bf16": 100, "base_bytes_in_memory": 100, "peak_rss_mb": 1.0}
    if kind == "sweep":
        import math

        r["val_loss_after"] = abs(math.log10(lr) + 3.5)  # 3e-4 is the best of (1e-4, 3e-4, 1e-3)
    if kind != "sweep":
        base = 50.0 if kind == "floor" else 60.0 + 2 * seed
        r["accuracy"] = {t: base for t in ba.TEST_TASKS} | {t + "_ll": base for t in ba.TEST_TASKS}
    if kind == "train":
        r.update(lr=0.0, train_loss=[2.0, 1.5, 1.0], step_time_s=1.0, tokens_per_s=10.0, val_loss_after=1.0)
    return r


def test_rerun_skips_finished_cells_and_refuses_other_settings(tiny_data, tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, check=False, env=None, **kwargs):
        if cmd[0] == "git":  # the commit the cells record: "unknown" here
            raise OSError("no git in this test")
        cell = cmd[cmd.index("--worker") + 1]
        job = json.loads(Path(cmd[cmd.index("--job") + 1]).read_text())
        calls.append((cell, job["lr"]))
        s = ba.Settings(**job["settings"])
        Path(job["result"]).write_text(json.dumps(_fake_result(cell, s)))

    monkeypatch.setattr(ba.bf, "data_root", lambda: tiny_data)
    monkeypatch.setattr(ba.subprocess, "run", fake_run)
    monkeypatch.setattr(ba, "sketch_bases", lambda s, tmp, todo: {})
    monkeypatch.setattr("sketchtune_cli.evaluate.registry.check_data", lambda *a: None)
    out = tmp_path / "res" / "adapt"
    argv = ["bench_adapt", "--out", str(out), "--methods", "floor-dense,lora-g4", "--seeds", "2", "--steps", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    ba.main()
    assert [c for c, _ in calls] == ["floor-dense", "sweep-lora-g4-lr1e-4", "sweep-lora-g4-lr3e-4", "sweep-lora-g4-lr1e-3",
                                     "train-lora-g4-seed0", "train-lora-g4-seed1"]
    assert dict(calls)["train-lora-g4-seed0"] == 3e-4  # the lowest validation loss of the sweep
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(f"{c}.json" for c, _ in calls)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["cells_done"] == report["cells_total"] == 6
    assert out.with_name("adapt_loss.png").stat().st_size > 1000
    calls.clear()
    ba.main()  # everything done: nothing runs again
    assert calls == []
    (out / "cells" / "train-lora-g4-seed1.json").unlink()
    ba.main()  # one cell missing: only that one runs
    assert [c for c, _ in calls] == ["train-lora-g4-seed1"]
    monkeypatch.setattr(sys, "argv", argv[:-1] + ["4"])  # other settings, same folder
    with pytest.raises(SystemExit, match="other settings"):
        ba.main()


def test_seed_aggregation_matches_hand_computation():
    s = ba.Settings()
    accs = {0: [60.0, 70.0, 40.0, 30.0, 50.0], 1: [64.0, 66.0, 44.0, 28.0, 58.0]}
    results = {}
    for seed, vals in accs.items():
        r = _fake_result(f"train-sketch-g4-seed{seed}", s)
        r["accuracy"] = dict(zip(ba.TEST_TASKS, vals)) | {t + "_ll": 40.0 + seed for t in ba.TEST_TASKS}
        r["peak_rss_mb"] = 100.0 + 10 * seed
        results[r["cell"]] = r
    floor = _fake_result("floor-sketch-g4", s)
    results["floor-sketch-g4"] = floor
    summ = ba.summarize(results)["sketch-g4"]
    boolq = summ["accuracy"]["st_boolq"]
    assert (boolq["mean"], boolq["min"], boolq["max"], boolq["range"], boolq["n"]) == (62.0, 60.0, 64.0, 4.0, 2)
    # five-task averages by hand: seed 0 (60+70+40+30+50)/5 = 50, seed 1 (64+66+44+28+58)/5 = 52
    avg = summ["accuracy"]["avg_gen"]
    assert avg["mean"] == pytest.approx(51.0) and avg["range"] == pytest.approx(2.0)
    assert summ["accuracy"]["avg_ll"]["mean"] == pytest.approx(40.5)
    assert summ["peak_rss_mb"] == pytest.approx(105.0)
    v = ba.verdicts(ba.summarize(results))
    # floor 50 on both: gen +1.0 is not above a seed range of 2.0; ll -9.5 is below
    assert any("avg_gen: 51.0 vs floor 50.0 (+1.0 pts; seed range 2.0, n=2) -> NOT above" in x for x in v)


def test_sampling_error_of_a_five_task_average_by_hand():
    """Accuracies 50, 80, 20, 50, 90 % on 40, 40, 40, 40, 10 examples: variances .25/40, .16/40, .16/40,
    .25/40, .09/10 sum to 0.0295; s.e. = 100 * sqrt(0.0295) / 5 = 3.435 points."""
    acc = {t: {"mean": v} for t, v in zip(ba.TEST_TASKS, (50.0, 80.0, 20.0, 50.0, 90.0))}
    counts = dict(zip(ba.TEST_TASKS, (40, 40, 40, 40, 10)))
    assert ba.sampling_se(acc, counts, "") == pytest.approx(3.4351, abs=1e-4)
    assert ba.sampling_se(acc, counts, "_ll") is None  # no log-likelihood scores: no error
    summary = {"sketch-g4": {"accuracy": acc}, "lora-g4": {"accuracy": acc}}
    r = ba.ratios(summary, counts)["sketch-g4 / lora-g4"]
    assert r["avg_gen sampling s.e. of the difference (pts)"] == pytest.approx(3.4351 * 2 ** 0.5, abs=1e-4)


def test_lora_ranks_match_sketch_lut_counts():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sketchtune_cli.models import load_model_config

    cfg = load_model_config("smollm2-135m")
    # SmolLM2-135M by hand: 30 layers; rows q 576, k 192, v 192, o 576, gate 1536, up 1536, down 576 = 5184;
    # rows + cols: 1152 + 768 + 768 + 1152 + 2112 + 2112 + 2112 = 10176 per rank
    sketch_g4, sketch_g1, lora_per_rank = 30 * 5184 * 4 * 16, 30 * 5184 * 1 * 16, 30 * 10176
    assert (sketch_g4, sketch_g1) == (9_953_280, 2_488_320)
    assert ba.bf.lora_rank_matching(4) == 33 and ba.bf.lora_rank_matching(1) == 8
    assert 33 == min(range(1, 100), key=lambda r: abs(r * lora_per_rank - sketch_g4))
    assert 8 == min(range(1, 100), key=lambda r: abs(r * lora_per_rank - sketch_g1))
    assert cfg.num_hidden_layers == 30
    cfg.num_hidden_layers, cfg.vocab_size = 1, 64  # one real-width layer, counted by PEFT itself
    peft = get_peft_model(AutoModelForCausalLM.from_config(cfg), LoraConfig(r=33, target_modules=ba.bf.TARGETS, task_type="CAUSAL_LM"))
    assert 30 * sum(p.numel() for p in peft.parameters() if p.requires_grad) == 33 * lora_per_rank == 10_074_240
