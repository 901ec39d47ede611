"""Helpers for export tests: logits, running the CLI in-process, loading in a sketchtune-free process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from helpers import run_cli  # noqa: F401  (re-exported for the export tests)

TOKENS = torch.tensor([[3, 17, 42, 5, 99, 23, 64, 8], [3, 9, 11, 12, 13, 70, 71, 1]])


def logits(model, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.float()


_PLAIN_LOAD = r"""
import sys
for name in ("sketchtune_cli", "sketchtune_kernels", "sketchtune_configs"):
    sys.modules[name] = None  # importing any of them now raises ImportError
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
export, tokens_file, out_file = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
AutoTokenizer.from_pretrained(export)
loaded = [m for m, mod in sys.modules.items() if m.startswith("sketchtune") and mod is not None]
assert not loaded, loaded
with torch.no_grad():
    save_file({"logits": model(load_file(tokens_file)["tokens"]).logits.float().contiguous()}, out_file)
"""


def logits_without_sketchtune(export_dir: Path, tmp_path: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """Load ``export_dir`` with plain transformers in a subprocess where sketchtune cannot be imported."""
    tokens_file, out_file = tmp_path / "tokens.safetensors", tmp_path / "plain_logits.safetensors"
    save_file({"tokens": tokens.contiguous()}, str(tokens_file))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PLAIN_LOAD, str(export_dir), str(tokens_file), str(out_file)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out_file))["logits"]


def config_json(directory: Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text())
