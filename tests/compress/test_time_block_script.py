"""scripts/time_compress_block.py (the GPU timing of a real-shaped block) runs end to end on a small shape."""
from __future__ import annotations

import json

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("time_compress_block")


def test_small_block_timing_report(script, tmp_path, capsys):
    out = tmp_path / "block.json"
    code = script.main(["--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2", "--blocks", "2",
                        "--samples", "2", "--seq-len", "16", "--device", "cpu", "--dtype", "float32",
                        "--set", "lut_refit_rounds=1", "--set", "kmeans_iters=5", "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    report = json.loads(out.read_text())
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    assert sorted((r["block"], r["layer"]) for r in report["layers"]) == sorted((b, n) for b in (0, 1) for n in names)
    assert report["settings"]["lut_refit_rounds"] == 1 and report["settings"]["kmeans_iters"] == 5
    assert report["est_32_layers_s"] == pytest.approx(report["seconds"] / 2 * 32)
    assert all(0 <= r["rel_error"] < 1 for r in report["layers"])
