"""Ecosystem loading of hf-sketch exports: lm-eval's hf model class, and the plugin registering on import."""
from __future__ import annotations

import torch

from helpers_export import logits


def test_lm_eval_hflm_loads_hf_sketch(tiny_artifacts, tmp_path):
    from lm_eval.models.huggingface import HFLM

    import sketchtune_cli  # noqa: F401  (registers quant_method "sketchtune" with transformers)
    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings
    from sketchtune_cli.loading import load_any
    from sketchtune_cli.sketch import SketchedLinear

    export_artifact(tiny_artifacts[1].path, tmp_path / "sk", ExportSettings(format="hf-sketch", dtype="fp32"))
    lm = HFLM(pretrained=str(tmp_path / "sk"), dtype="float32", device="cpu", batch_size=2)
    assert any(isinstance(m, SketchedLinear) for m in lm.model.modules())
    assert torch.equal(logits(lm.model), logits(load_any(tiny_artifacts[1].path, dtype="float32").model))
    from lm_eval.api.instance import Instance

    request = Instance(request_type="loglikelihood", doc={}, arguments=("t3 t4", " t5"), idx=0)
    [(loglik, _)] = lm.loglikelihood([request])
    assert loglik < 0 and loglik == loglik


_FRESH_PROCESS = r"""
import sys
import sketchtune_cli
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import sketchtune_cli must stay cheap"
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
assert type(model.model.layers[0].self_attn.q_proj).__name__ == "SketchedLinear"
"""


def test_import_registers_plugin_in_fresh_process(tiny_artifacts, tmp_path):
    """``import sketchtune_cli`` before transformers: the plugin registers when transformers loads it."""
    import os
    import subprocess
    import sys

    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings

    export_artifact(tiny_artifacts[0].path, tmp_path / "sk", ExportSettings(format="hf-sketch"))
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "sk")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
