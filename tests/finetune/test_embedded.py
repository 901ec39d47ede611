"""A few fine-tuning steps of the embedded SmolLM2-135M sketch on Math10K (shared data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ft_helpers import rtn_sketches, run_cli

from sketchtune_cli.artifacts import read_manifest, write_artifact
from sketchtune_cli.loading import load_any

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def embedded_base(request, tmp_path_factory) -> Path:
    """The compress engineer's real sketch (``embedded_sketch_dir``) when present, else a data-free
    round-to-nearest sketch of the embedded model (G=4)."""
    try:
        return Path(request.getfixturevalue("embedded_sketch_dir"))
    except pytest.FixtureLookupError:
        from sketchtune_cli.models import load_model
        from sketchtune_cli.sketch import replace_with_sketches, save_sketch

        model, tokenizer = load_model("smollm2-135m", dtype="float32")
        replace_with_sketches(model, rtn_sketches(model, 4, 4))
        out = tmp_path_factory.mktemp("emb") / "sketch"
        with write_artifact(out, "sketch", {"test": "rtn sketch of smollm2-135m"}) as w:
            save_sketch(model, tokenizer, w.path)
        return out


def test_math10k_steps(embedded_base, data_dir, tmp_path):
    math = data_dir / "train" / "math_data.json"
    if not math.is_file():
        pytest.skip(f"{math} not found")
    out = tmp_path / "ft"
    code, stdout, err = run_cli(
        "finetune", "--base", str(embedded_base), "--data", str(math), "-o", str(out), "train.max_steps=2",
        "train.batch_size=1", "train.micro_batch_size=1", "train.lr=1e-4", "train.warmup_steps=0",
        "data.limit=4", "data.max_seq_len=160", "train.gradient_checkpointing=true", "logging.plots=false",
    )
    assert code == 0, err
    assert stdout.strip() == str(out)
    m = read_manifest(out, stage="finetune")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)  # a real model: far below ln(vocab) = 10.8
    assert m.results["trainable_params"] > 0
    loaded = load_any(out, dtype=torch.float32)
    assert loaded.kind == "finetune"
