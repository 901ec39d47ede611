"""scripts/report_gpu.py renders a GPU session's files: its ratios and bandwidths match hand arithmetic."""
from __future__ import annotations

import json

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("report_gpu")


def check_file(ms: dict) -> dict:
    case = {"dtype": "torch.bfloat16", "errors": {"dequant": 0.0, "matmul": 0.004, "lut_grad": 1e-7,
                                                  "lut_grad_from_io": 2e-7}}
    return {"correctness": {"cases": [case, {**case, "dtype": "torch.float32"}, {**case, "dtype": "torch.float16"}],
                            "failed": 0, "deterministic": {"lut_grad": True, "lut_grad_from_io": True}},
            "timings": [{"rows": 4096, "cols": 4096, "tokens": 1, "bits": 4, "groups_per_row": 4, "ms": ms}]}


def test_kernel_ratios_and_dequant_bandwidth(script, tmp_path):
    ms = {"dense_matmul": 0.05, "dequant": 0.1, "dequant+matmul": 0.2, "fused_matmul": 0.1, "dense_grad_w_bf16": 0.04,
          "lut_grad_only": 0.3, "lut_grad_via_fp32_grad_w": 0.6, "lut_grad_fused_io": 0.2}
    (tmp_path / "gpu_check.json").write_text(json.dumps(check_file(ms)))
    page = script.render(tmp_path)
    assert "3/3 cases within tolerance" in page
    row = next(line for line in page.splitlines() if line.startswith("| 4096x4096 | 1 |") and line.endswith("|")
               and "x |" in line)
    # fused/dense 2.0, (dequant+matmul)/dense 4.0, fused/(dequant+matmul) 0.5, grad fused/dense 5.0,
    # via-grad_W/fused 3.0; dequant moves 4096*4096*(2 + 0.5) bytes in 0.1 ms = 419 GB/s.
    assert row == "| 4096x4096 | 1 | 2.0x | 4.0x | 0.50x | 5.0x | 3.00x | - | 419 |"
    ms["lut_grad_materialized"] = 0.05
    (tmp_path / "gpu_check.json").write_text(json.dumps(check_file(ms)))
    assert "| 4096x4096 | 1 | 2.0x | 4.0x | 0.50x | 5.0x | 3.00x | 0.25x | 419 |" in script.render(tmp_path)


def test_block_section_compares_measured_with_predicted(script, tmp_path):
    block = {"settings": {"bits": 4, "groups_per_row": 1}, "calibration": {"samples": 128, "seq_len": 2048},
             "blocks": 1, "seconds": 10.0, "seconds_per_block": 10.0, "est_32_layers_s": 320.0,
             "peak_device_memory_gib": 29.6, "phases_measured_s": {"hessian": 3.0, "refit": 6.0},
             "phases_predicted_s": {"hessian": 2.0, "refit": 5.0},
             "phases_predicted_from_spec_sheet_s": {"hessian": 2.5, "refit": 4.0},
             "layers": [{"layer": "mlp.down_proj", "sketch_s": 4.0, "rel_error": 0.008}]}
    (tmp_path / "block_g1.json").write_text(json.dumps(block))
    page = script.render(tmp_path)
    assert "**5.3 min**" in page  # 320 s
    assert "| refit | 6.00 | 5.00 | 4.00 | 1.50 |" in page
    assert "| **all** | **9.00** | 7.00 | 6.50 | 1.38 |" in page
    assert "### G=1" in page and "### G=4" not in page  # only the blocks whose files exist


def test_finetune_section_ratios_come_from_the_file(script, tmp_path):
    def method(name, ms, peak, vs=None):
        row = {"method": name, "trainable": name, "trainable_params": 2_000_000, "ms_per_step": ms,
               "tokens_per_s": 8192 / (ms / 1e3), "peak_device_memory_gib": peak}
        return {**row, "vs_matched_lora": vs} if vs else row

    report = {"shape": {"blocks": 2, "hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8},
              "batch": 4, "seq_len": 2048, "bits": 4, "timed_steps": 10,
              "methods": [method("sketch-g4", 300.0, 20.0, {"step_time": 1.5, "peak_memory": 0.8}),
                          method("lora-g4", 200.0, 25.0)]}
    (tmp_path / "finetune_block.json").write_text(json.dumps(report))
    page = script.render(tmp_path)
    assert "| sketch-g4 | sketch-g4 | 2.00 | 300.0 | 27307 | 20.0 | 1.50x | 0.80x |" in page
    assert "| lora-g4 | lora-g4 | 2.00 | 200.0 | 40960 | 25.0 |  |  |" in page
