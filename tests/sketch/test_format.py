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


def _from_pretrained(directory, **kwargs):
    from transformers import AutoModelForCausalLM

    import sketchtune_cli  # noqa: F401  (registers the transformers quantizer)

    return AutoModelForCausalLM.from_pretrained(directory, **kwargs)


def test_shards_follow_max_shard_size_and_load_on_both_paths(tmp_path):
    """Sharding is huggingface_hub's: the size limit given is honoured, and both readers (load_sketch and
    from_pretrained through the quantizer) put the shards back together."""
    model = tiny_llama(tie_word_embeddings=True)
    replace_with_sketches(model, random_sketches(model))
    ids = torch.randint(0, 128, (1, 7))
    expected = model(ids).logits
    save_sketch(model, None, tmp_path, max_shard_size=40_000)  # bytes; the embedding alone is 32 KiB
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "model.safetensors").exists()
    assert all(p.stat().st_size <= 40_000 + 4096 for p in tmp_path.glob("model-*.safetensors"))  # + header
    assert "lm_head.weight" not in index["weight_map"]  # tied: stored once, under the embedding's name
    assert torch.equal(load_sketch(tmp_path)(ids).logits, expected)
    assert torch.equal(_from_pretrained(tmp_path, dtype=torch.float32)(ids).logits, expected)


def test_stored_lut_dtype_is_honoured_by_both_readers(tmp_path):
    """fp32 dense tensors with bf16 LUTs: loaded as stored unless another dtype is asked for."""
    model = tiny_llama()
    replace_with_sketches(model, random_sketches(model), lut_dtype=torch.bfloat16)
    save_sketch(model, None, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["lut_dtype"] == "bfloat16"
    ids = torch.randint(0, 128, (1, 7))
    expected = model(ids).logits
    for loaded in (load_sketch(tmp_path), _from_pretrained(tmp_path), _from_pretrained(tmp_path, dtype="auto")):
        layer = loaded.model.layers[0].self_attn.q_proj
        assert layer.lut.dtype == torch.bfloat16 and loaded.model.embed_tokens.weight.dtype == torch.float32
        assert torch.equal(loaded(ids).logits, expected)
    for loaded in (load_sketch(tmp_path, dtype=torch.float16), _from_pretrained(tmp_path, dtype=torch.float16)):
        assert loaded.model.layers[0].self_attn.q_proj.lut.dtype == torch.float16
        assert loaded.model.embed_tokens.weight.dtype == torch.float16


def test_load_sketch_refuses_a_checkpoint_missing_a_tensor(tmp_path):
    """from_pretrained alone would warn and initialise the missing LUT at random; load_sketch refuses."""
    from safetensors.torch import load_file, save_file

    model = tiny_llama()
    replace_with_sketches(model, random_sketches(model))
    save_sketch(model, None, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.0.self_attn.q_proj.lut"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing from the checkpoint.*q_proj.lut"):
        load_sketch(tmp_path)
