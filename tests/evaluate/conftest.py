"""Fixtures for eval tests: a tiny LLM-Adapters-style data dir whose scripted answers have a hand-computed
accuracy (eval_fakes.py), a socket guard, and a sketch artifact of the embedded model."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # eval_fakes (pytest runs in importlib mode)

from eval_fakes import write_data_dir  # noqa: E402


@pytest.fixture
def fake_data_dir(tmp_path) -> Path:
    return write_data_dir(tmp_path / "llm-adapters")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to open a network connection."""
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))


@pytest.fixture
def one_thread():
    """One torch thread: on this shared 2-core machine, two OpenMP threads competing with other jobs made a
    SmolLM2 forward ~30x slower (spin-waiting), not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def eval_sketch_dir(tmp_path_factory, request) -> Path:
    """A sketch artifact of the embedded model: the compress engineer's ``embedded_sketch_dir`` when that
    fixture exists, else random LUTs and codes (a format fixture, not a good sketch)."""
    try:
        return Path(request.getfixturevalue("embedded_sketch_dir"))
    except pytest.FixtureLookupError:
        pass
    from helpers import random_sketches
    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.models import load_model
    from sketchtune_cli.sketch import replace_with_sketches, save_sketch

    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    replace_with_sketches(model, random_sketches(model, seed=0))
    out = tmp_path_factory.mktemp("eval-sketch") / "sketch"
    with write_artifact(out, "sketch", {"model": {"name": "smollm2-135m"}, "compress": {"bits": 4, "groups_per_row": 4}}) as w:
        save_sketch(model, tokenizer, w.path)
    return out
