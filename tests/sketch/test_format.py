"""Sketch format: save -> load round trip gives identical logits; conversion both ways."""
import json

import pytest
import torch

from helpers import random_sketches, tiny_llama
from sketchtune_cli.sketch import (
    find_target_linears, load_luts, load_sketch, lut_state_dict, materialize_dense, replace_with_sketches,
    save_sketch, sketched_layers,
)


@pytest.mark.parametrize("family,tie", [("llama", True), ("llama", False), ("qwen2", False), ("mistral", False)])
def test_round_trip_identical_logits(tmp_path, family, tie):
    model = tiny_llama(family=family, tie_word_embeddings=tie)
    replace_with_sketches(model, random_sketches(model, bits=4, groups_per_row=4))
    ids = torch.randint(0, 128, (2, 11))
    expected = model(ids).logits
    qcfg = save_sketch(model, None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "sketchtune"
    assert cfg["quantization_config"]["bits"] == 4 and cfg["quantization_config"]["groups_per_row"] == 4
    assert len(qcfg["modules"]) == 2 * 7
    loaded = load_sketch(tmp_path)
    assert torch.equal(loaded(ids).logits, expected)


def test_default_targets_are_the_seven_block_projections():
    model = tiny_llama()
    names = list(find_target_linears(model))
    assert len(names) == 14 and "lm_head" not in names
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    only_attn = find_target_linears(model, targets=["*.self_attn.*"], ignore=["o_proj"])
    assert {n.rsplit(".", 1)[1] for n in only_attn} == {"q_proj", "k_proj", "v_proj"}


def test_materialize_dense_reproduces_logits_exactly():
    model = tiny_llama()
    replace_with_sketches(model, random_sketches(model, bits=3, groups_per_row=2))
    ids = torch.randint(0, 128, (1, 9))
    expected = model(ids).logits
    materialize_dense(model)
    assert not sketched_layers(model)
    assert torch.equal(model(ids).logits, expected)


def test_load_luts_checks_keys_and_shapes():
    model = tiny_llama()
    replace_with_sketches(model, random_sketches(model))
    luts = {k: v + 1 for k, v in lut_state_dict(model).items()}
    load_luts(model, luts)
    assert all(torch.equal(lut_state_dict(model)[k], v) for k, v in luts.items())
    with pytest.raises(ValueError, match="do not match"):
        load_luts(model, dict(list(luts.items())[1:]))
    bad = dict(luts)
    k = next(iter(bad))
    bad[k] = bad[k][:, :1]
    with pytest.raises(ValueError, match="shape"):
        load_luts(model, bad)
