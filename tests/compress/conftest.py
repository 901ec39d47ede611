"""Fixtures of the compress tests: tiny random models saved as HF directories with a tiny offline
tokenizer, so the real CLI can load them (no hub, no embedded model)."""
from __future__ import annotations

from pathlib import Path

import pytest

import helpers
from helpers import VOCAB, save_tiny_model, tiny_tokenizer  # noqa: F401  (re-exported for the tests here)

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (2 blocks, hidden 64) as a local HF model directory."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 (q/k/v biases), hidden 96: groups_per_row=5 does not divide it."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), family="qwen2", hidden_size=96,
                           intermediate_size=192, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture
def run_cli(capsys):
    """Run the real ``sketchtune`` entry point in-process: returns (exit code, stdout, stderr)."""
    return lambda *args: helpers.run_cli(capsys, *args)
