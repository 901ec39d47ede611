"""Model specs: aliases, local dirs, GGUF, and one-line errors for models that cannot be had."""
import pytest
import torch

from sketchtune_cli.errors import UserError
from sketchtune_cli.models import ALIASES, load_model, load_model_config, resolve_model


def test_aliases_resolve_to_hub_ids():
    assert resolve_model("llama-3-8b").location == "meta-llama/Meta-Llama-3-8B"
    assert resolve_model("LLAMA-7B").location == "huggyllama/llama-7b"
    assert set(ALIASES) >= {"llama-3-8b", "llama-2-7b", "llama-7b", "llama-13b", "mistral-7b", "smollm2-135m"}


def test_local_dir_and_missing_paths(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path / "m"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model("./nowhere")


def test_unreachable_hub_model_is_one_line():
    # HF_HUB_OFFLINE=1 (conftest): the hub is unreachable, as for a user without network.
    with pytest.raises(UserError, match="neither an alias .* nor reachable"):
        load_model("someone/not-a-model-xyz")


def test_alias_configs_work_offline():
    cfg = load_model_config("llama-3-8b")
    assert cfg.hidden_size == 4096 and cfg.num_key_value_heads == 8


@pytest.mark.embedded
def test_embedded_model_loads_and_generates(embedded_dir):
    model, tok = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert any(embedded_dir.glob("*.safetensors"))
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])
