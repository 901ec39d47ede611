"""scripts/time_finetune_block.py (the GPU timing of a fine-tuning step): matched ranks and a small CPU run."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("time_finetune_block")


def test_lora_rank_matching_llama_3_8b(script):
    # One Llama-3-8B block: 43,008 output rows over its 7 linears; LoRA pays rows + cols = 81,920 per rank.
    # G=4: 43,008 * 4 * 16 / 81,920 = 33.6 -> 34; G=1: 8.4 -> 8.
    shape = SimpleNamespace(hidden=4096, intermediate=14336, heads=32, kv_heads=8, bits=4)
    assert sum(rows for rows, _ in load_script("synthetic_llama").block_shapes(shape)) == 43_008
    assert script.matched_lora_rank(shape, 4) == 34 and script.matched_lora_rank(shape, 1) == 8


def test_small_run_trains_every_method_at_matched_counts(script, tmp_path, capsys):
    out = tmp_path / "ft.json"
    code = script.main(["--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2", "--blocks", "1",
                        "--vocab", "64", "--seq-len", "16", "--batch", "1", "--steps", "1", "--device", "cpu",
                        "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    rows = {r["method"]: r for r in json.loads(out.read_text())["methods"]}
    assert set(rows) == {"sketch-g4", "sketch-g4-tiled", "lora-g4", "sketch-g1", "lora-g1", "full"}
    # LUTs: rows * G * 16 over q,k,v,o,gate,up,down = (64+32+32+64+128+128+64) = 512 rows.
    assert rows["sketch-g4"]["trainable_params"] == rows["sketch-g4-tiled"]["trainable_params"] == 512 * 4 * 16
    assert rows["sketch-g1"]["trainable_params"] == 512 * 16
    # LoRA r: 512*64 / (rows+cols = 128+96+96+128+192+192+192 = 1024) = 32 -> 32 * 1024 parameters.
    assert rows["lora-g4"]["trainable_params"] == 32 * 1024
    assert rows["sketch-g4"]["vs_matched_lora"]["step_time"] == pytest.approx(
        rows["sketch-g4"]["ms_per_step"] / rows["lora-g4"]["ms_per_step"])
    for r in rows.values():  # 4 steps of AdamW moved every method's loss
        first, last = r["loss_first_last"]
        assert first != last
