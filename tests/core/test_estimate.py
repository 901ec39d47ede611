"""`inspect --estimate` reproduces the paper's trainable counts exactly, from bundled configs (offline)."""
import json

import pytest
from typer.testing import CliRunner

from helpers import estimate_for_spec

from sketchtune_cli.cli import app

# Independent reference: rows of the 7 projections per block (hidden*2 + kv*2 + inter*2 + hidden) from the
# models' published shapes, times layers.
ROWS_X_LAYERS = {
    "llama-3-8b": (4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096) * 32,
    "llama-2-7b": (4096 * 4 + 11008 * 2 + 4096) * 32,
    "llama-7b": (4096 * 4 + 11008 * 2 + 4096) * 32,
    "llama-13b": (5120 * 4 + 13824 * 2 + 5120) * 40,
}
PAPER = {("llama-3-8b", 4): 88_080_384, ("llama-2-7b", 1): 21_757_952, ("llama-13b", 4): 136_314_880}


@pytest.mark.parametrize("model", list(ROWS_X_LAYERS))
@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_trainable_counts(model, groups):
    est = estimate_for_spec(model, 4, groups)
    assert est.trainable_params == ROWS_X_LAYERS[model] * groups * 16
    if (model, groups) in PAPER:
        assert est.trainable_params == PAPER[(model, groups)]


def test_llama3_sizes_match_method_doc():
    est = estimate_for_spec("llama-3-8b", 4, 4)
    assert round(est.base_model_bytes / 1e9, 2) == 5.77
    assert round(est.dense_model_bytes / 1e9, 2) == 16.06


def test_cli_json_and_errors():
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", "--estimate", "llama-3-8b", "--bits", "4", "--groups-per-row", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["trainable_params"] == 88_080_384 and data["base_model_bytes"] == 5_767_700_480
