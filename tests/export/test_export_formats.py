"""The three export formats on a tiny random model: each loads back with the fine-tuned model's logits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from helpers_export import config_json, logits, logits_without_sketchtune, run_cli
from sketchtune_cli.artifacts import read_manifest
from sketchtune_cli.loading import load_any


@pytest.fixture(scope="module")
def finetuned_logits(tiny_artifacts):
    return logits(load_any(tiny_artifacts[1].path, dtype="float32").model)


def test_hf_dense_loads_without_sketchtune(tiny_artifacts, finetuned_logits, tmp_path, capsys):
    out = tmp_path / "dense"
    code, stdout, err = run_cli(capsys, "export", str(tiny_artifacts[1].path), "--format", "hf-dense",
                                "--dtype", "fp32", "-o", str(out), "export.max_shard_size=100KB")
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert (out / "model.safetensors.index.json").is_file()  # sharded
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert "quantization_config" not in config_json(out)
    assert "sketchtune" not in (out / "config.json").read_text()
    assert torch.equal(logits_without_sketchtune(out, tmp_path), finetuned_logits)


def test_hf_dense_default_dtype_is_bf16(tiny_artifacts, tmp_path):
    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings

    manifest = export_artifact(tiny_artifacts[0].path, tmp_path / "d", ExportSettings())
    with safe_open(str(tmp_path / "d" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert manifest.results["dtype"] == "bf16" and manifest.results["format"] == "hf-dense"


def test_hf_sketch_from_pretrained_same_logits_and_generate(tiny_artifacts, finetuned_logits, tmp_path):
    from transformers import AutoModelForCausalLM

    import sketchtune_cli  # noqa: F401  (registers the quantizer)
    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings
    from sketchtune_cli.sketch import SketchedLinear

    out = tmp_path / "sk"
    export_artifact(tiny_artifacts[1].path, out, ExportSettings(format="hf-sketch", dtype="fp32"))
    qcfg = config_json(out)["quantization_config"]
    assert qcfg["quant_method"] == "sketchtune" and qcfg["bits"] == 4
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert isinstance(model.model.layers[0].mlp.down_proj, SketchedLinear)
    assert torch.equal(logits(model), finetuned_logits)
    reference = load_any(tiny_artifacts[1].path, dtype="float32").model
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=2)
    assert torch.equal(model.generate(torch.tensor([[3, 5, 7]]), **kwargs),
                       reference.generate(torch.tensor([[3, 5, 7]]), **kwargs))
    model.save_pretrained(tmp_path / "resaved")  # the plugin-loaded model serializes back to a sketch
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved", dtype=torch.float32)
    assert torch.equal(logits(again), finetuned_logits)
    dense = again.dequantize()  # transformers' API: SketchedLinear -> nn.Linear holding W_hat
    assert type(dense.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert torch.equal(logits(dense), finetuned_logits)


def test_hf_sketch_trains_luts_only(tiny_artifacts, tmp_path):
    from transformers import AutoModelForCausalLM

    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings

    out = tmp_path / "sk"
    export_artifact(tiny_artifacts[1].path, out, ExportSettings(format="hf-sketch"))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".lut") for n in trainable)
    layer = model.model.layers[1].self_attn.q_proj
    lut0, codes0, emb0 = layer.lut.detach().clone(), layer.codes.clone(), model.model.embed_tokens.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.tensor([[3, 4, 5, 6, 7]]), labels=torch.tensor([[3, 4, 5, 6, 7]])).loss.backward()
    opt.step()
    assert not torch.equal(layer.lut, lut0)
    assert torch.equal(layer.codes, codes0) and torch.equal(model.model.embed_tokens.weight, emb0)


def test_hf_sketch_with_transformers_trainer(tiny_artifacts, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings

    export_artifact(tiny_artifacts[1].path, tmp_path / "sk", ExportSettings(format="hf-sketch", dtype="fp32"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sk", dtype=torch.float32)
    lut0 = model.model.layers[0].mlp.up_proj.lut.detach().clone()
    rows = [{"input_ids": torch.arange(3, 11) + i, "labels": torch.arange(3, 11) + i} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert not torch.equal(model.model.layers[0].mlp.up_proj.lut.detach(), lut0)


def test_lut_only_reapplied_to_base(tiny_artifacts, finetuned_logits, tmp_path):
    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings

    sketch, finetune = tiny_artifacts
    manifest = export_artifact(finetune.path, tmp_path / "luts", ExportSettings(format="lut-only", dtype="fp32"))
    assert sorted(manifest.files) == ["README.md", "adapter_config.json", "lut_adapter.safetensors"]
    adapter = json.loads((tmp_path / "luts" / "adapter_config.json").read_text())
    assert adapter["base_sketch"]["content_hash"] == sketch.content_hash
    assert torch.equal(logits(load_any(tmp_path / "luts").model), finetuned_logits)


def test_manifest_results_and_model_card(tiny_artifacts, tmp_path):
    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.export.stage import export_artifact
    from sketchtune_cli.export.settings import ExportSettings

    sketch, finetune = tiny_artifacts
    evaluation = finetune.path.parent / "eval-for-card"
    if not evaluation.exists():
        with write_artifact(evaluation, "eval", {"eval": {"tasks": ["gsm8k"]}}, parent=finetune) as w:
            w.results = {"gsm8k": {"accuracy": 12.5}}
    manifest = export_artifact(finetune.path, tmp_path / "e", ExportSettings(format="lut-only"))
    results = read_manifest(tmp_path / "e", stage="export").results
    assert results["format"] == "lut-only" and results["dtype"] == "bf16"
    assert results["sizes"]["trainable_params"] == sum(  # rows * G * 2^bits over 2 layers
        r * 4 * 16 for r in [64, 32, 32, 64, 128, 128, 64]) * 2
    assert results["base_sketch"]["content_hash"] == sketch.content_hash
    card = (tmp_path / "e" / "README.md").read_text()
    for needle in ("tiny-llama", "groups_per_row | 4", "lr: 0.0001", "gsm8k.accuracy", "12.5", "### sketch", "### finetune"):
        assert needle in card, needle
    assert manifest.parent["content_hash"] == finetune.content_hash
