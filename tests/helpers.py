"""Shared test helpers: tiny random models built in the test (no hub, no downloads)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def tiny_llama(seed: int = 0, family: str = "llama", **overrides):
    """A tiny random causal LM (Llama by default; ``family="qwen2"`` gives q/k/v biases)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=False)
    fields.update(overrides)
    config = AutoConfig.for_model(family, **fields)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def random_sketches(model, bits: int = 4, groups_per_row: int = 4, seed: int = 0):
    """Random LUTs and codes for every target linear (for format tests; not a good sketch)."""
    from sketchtune_cli.sketch import Sketch, find_target_linears

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, lin in find_target_linears(model).items():
        rows, cols = lin.out_features, lin.in_features
        lut = torch.randn(rows, groups_per_row, 2**bits, generator=g) * 0.05
        codes = torch.randint(0, 2**bits, (rows, groups_per_row, cols // groups_per_row), generator=g, dtype=torch.uint8)
        out[name] = Sketch(lut, codes, bits)
    return out


VOCAB = 128


def tiny_tokenizer():
    """A 128-token BPE trained in memory on CPython's pydoc text (offline, ~0.1 s)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"], limit_alphabet=90,
                                  show_progress=False)
    tok.train_from_iterator([topics[k] for k in sorted(topics)][:20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def save_tiny_model(directory: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    model = tiny_llama(seed, family=family, vocab_size=VOCAB, **overrides)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``sketchtune ARGV`` in this process through the real entry point: (exit code, stdout, stderr)."""
    from sketchtune_cli.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def naive_weight(lut, codes):
    """Independent reference by explicit loops: ``W[i, j] = lut[i, j // n, codes[i, j // n, j % n]]``."""
    rows, groups, n = codes.shape
    w = torch.empty(rows, groups * n, dtype=lut.dtype)
    for i in range(rows):
        for j in range(groups * n):
            w[i, j] = lut[i, j // n, int(codes[i, j // n, j % n])]
    return w


def load_script(name: str):
    """Imports ``scripts/<name>.py`` (not a package) as a module, for testing its functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


HOOKS_DIR = Path(__file__).resolve().parent / "hooks"


def hook_env(spec: str, rank: int | None = None, pid: int | None = None) -> dict:
    """Environment for a subprocess that acts at an exact block/step (see tests/hooks/sitecustomize.py)."""
    env = {"SKETCHTUNE_TEST_HOOK": spec,
           "PYTHONPATH": os.pathsep.join(p for p in (str(HOOKS_DIR), os.environ.get("PYTHONPATH")) if p)}
    if rank is not None:
        env["SKETCHTUNE_TEST_HOOK_RANK"] = str(rank)
    if pid is not None:
        env["SKETCHTUNE_TEST_HOOK_PID"] = str(pid)
    return env


def estimate_for_spec(spec: str, bits: int, groups_per_row: int):
    """The sketch estimate `inspect --estimate` makes for a model spec: its config on the meta device."""
    from sketchtune_cli.estimate import estimate_sketch
    from sketchtune_cli.models import load_model_config, meta_model

    return estimate_sketch(meta_model(load_model_config(spec)), spec, bits, groups_per_row)
