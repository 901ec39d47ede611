"""AdapterBank: one base sketch in memory, lut-only adapters switched in place."""
from __future__ import annotations

import pytest
import torch

from artifacts_export import write_finetune_artifact
from helpers_export import logits
from sketchtune_cli.errors import UserError
from sketchtune_cli.export.adapters import BASE, AdapterBank
from sketchtune_cli.export.stage import export_artifact
from sketchtune_cli.export.settings import ExportSettings
from sketchtune_cli.loading import load_any


def test_switch_adapters_in_place(tiny_artifacts, tmp_path):
    sketch, finetune = tiny_artifacts
    other = write_finetune_artifact(tmp_path / "ft2", sketch, seed=7)
    adapters = {}
    for ft in (finetune, other):
        out = tmp_path / f"luts-{ft.path.name}"
        export_artifact(ft.path, out, ExportSettings(format="lut-only", dtype="fp32"))
        adapters[out] = logits(load_any(ft.path, dtype="float32").model)

    bank = AdapterBank(sketch, dtype=torch.float32)
    base_logits = logits(bank.model)
    lut_param = bank.model.model.layers[0].self_attn.q_proj.lut
    codes = {k: v.clone() for k, v in bank.model.state_dict().items() if k.endswith(".codes")}
    names = [bank.add(path) for path in adapters]
    for _ in range(2):
        for name, path in zip(names, adapters):
            bank.activate(name)
            assert torch.equal(logits(bank.model), adapters[path])
    assert bank.model.model.layers[0].self_attn.q_proj.lut is lut_param  # same Parameter object: in place
    assert all(torch.equal(v, bank.model.state_dict()[k]) for k, v in codes.items())
    bank.activate(BASE)
    assert torch.equal(logits(bank.model), base_logits)
    assert bank.adapter_bytes(names[0]) < bank.model_bytes()


def test_adapter_for_another_base_is_refused(tiny_artifacts, tmp_path):
    from artifacts_export import tiny_tokenizer, write_sketch_artifact
    from helpers import tiny_llama

    other_sketch = write_sketch_artifact(tmp_path / "other", tiny_llama(seed=3), tiny_tokenizer(), "other")
    export_artifact(other_sketch.path, tmp_path / "luts", ExportSettings(format="lut-only"))
    bank = AdapterBank(tiny_artifacts[0])
    with pytest.raises(UserError, match="was made for base sketch"):
        bank.add(tmp_path / "luts")
    with pytest.raises(UserError, match="no adapter"):
        bank.activate("nope")
