"""Fixtures for finetune tests: a tiny random sketch artifact with the embedded model's tokenizer (offline)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ft_helpers import make_base  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from sketchtune_cli.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "sketch", tokenizer)
