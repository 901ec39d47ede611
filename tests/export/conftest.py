"""Fixtures for export tests: sketch and fake fine-tune artifacts of a tiny random model (and, marked
embedded, of SmolLM2-135M), built once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers_export, artifacts_export

from artifacts_export import tiny_tokenizer, write_finetune_artifact, write_sketch_artifact
from helpers import tiny_llama


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """(sketch manifest, fine-tune manifest) of a tiny random Llama."""
    root = tmp_path_factory.mktemp("tiny")
    sketch = write_sketch_artifact(root / "sketch", tiny_llama(seed=0), tiny_tokenizer(), "tiny-llama")
    finetune = write_finetune_artifact(root / "finetune", sketch)
    return sketch, finetune


@pytest.fixture(scope="session")
def embedded_artifacts(tmp_path_factory, request):
    """(sketch manifest, fine-tune manifest) of SmolLM2-135M: the compress engineer's real sketch fixture
    (``embedded_sketch_dir``) when present, else a random sketch of the embedded model."""
    from sketchtune_cli.artifacts import read_manifest

    root = tmp_path_factory.mktemp("embedded")
    try:
        sketch = read_manifest(request.getfixturevalue("embedded_sketch_dir"), stage="sketch")
    except pytest.FixtureLookupError:
        from sketchtune_cli.models import load_model

        model, tokenizer = load_model("smollm2-135m", dtype="float32")
        sketch = write_sketch_artifact(root / "sketch", model, tokenizer, "smollm2-135m")
    return sketch, write_finetune_artifact(root / "finetune", sketch)
