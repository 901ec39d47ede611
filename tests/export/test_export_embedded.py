"""Exports of the embedded SmolLM2-135M sketch (tied embeddings, real tokenizer, 30 blocks). lut-only is
only tested on the tiny model: it is a plain LUT copy, nothing in it depends on the architecture."""
from __future__ import annotations

import pytest
import torch

from helpers_export import config_json, logits, logits_without_sketchtune
from sketchtune_cli.export.stage import export_artifact
from sketchtune_cli.export.settings import ExportSettings
from sketchtune_cli.loading import load_any

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def tokens(embedded_artifacts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_artifacts[0].path)
    return tok(["The capital of France is", "def add(a, b): return"], return_tensors="pt", padding=True)["input_ids"]


@pytest.fixture(scope="module")
def finetuned_fp32(embedded_artifacts, tokens):
    return logits(load_any(embedded_artifacts[1].path, dtype="float32").model, tokens)


def test_embedded_hf_dense_plain_transformers(embedded_artifacts, finetuned_fp32, tokens, tmp_path):
    out = tmp_path / "dense"
    export_artifact(embedded_artifacts[1].path, out, ExportSettings(format="hf-dense", dtype="fp32"))
    assert "quantization_config" not in config_json(out)
    assert torch.equal(logits_without_sketchtune(out, tmp_path, tokens), finetuned_fp32)


def test_embedded_hf_sketch_from_pretrained(embedded_artifacts, finetuned_fp32, tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    export_artifact(embedded_artifacts[1].path, tmp_path / "sk", ExportSettings(format="hf-sketch", dtype="fp32"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sk", dtype=torch.float32)
    assert torch.equal(logits(model, tokens), finetuned_fp32)

