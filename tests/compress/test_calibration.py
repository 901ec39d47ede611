"""Calibration windows: sources, determinism, too little text, bad files; the prompt template."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from helpers import tiny_tokenizer
from sketchtune_cli.compress.calibration import draw_windows, file_texts, load_calibration
from sketchtune_cli.errors import UserError
from sketchtune_cli.prompts import render_alpaca


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_render_alpaca_matches_the_paper_template():
    prompt = render_alpaca("Add 2 and 3.")
    assert prompt == ("Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    assert render_alpaca("Add 2 and 3.", "", "5") == prompt + "5"
    with_input = render_alpaca("Add.", "2 and 3", "5")
    assert "paired with an input" in with_input and "### Input:\n2 and 3\n\n### Response:\n5" in with_input


def test_builtin_windows_are_deterministic_per_seed(tok):
    a = load_calibration("builtin", tok, 6, 32, seed=1)
    b = load_calibration("builtin", tok, 6, 32, seed=1)
    c = load_calibration("builtin", tok, 6, 32, seed=2)
    assert a.input_ids.shape == (6, 32) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.describe()["num_samples"] == 6


def test_windows_do_not_overlap():
    stream = list(range(100))
    ids = draw_windows(stream, 4, 10, seed=0)
    starts = sorted(int(row[0]) for row in ids)
    assert all(s % 10 == 0 for s in starts) and len(set(starts)) == 4
    assert all(torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 10)) for row in ids)


def test_jsonl_records_use_the_finetuning_prompt(tmp_path, tok):
    path = tmp_path / "data.jsonl"
    rec = {"instruction": "What is two plus three?", "input": "", "output": "The answer is five."}
    path.write_text("\n".join(json.dumps(rec) for _ in range(30)) + "\n")
    assert file_texts(path)[0] == render_alpaca(rec["instruction"], "", rec["output"])
    assert load_calibration(str(path), tok, 2, 16, seed=0).input_ids.shape == (2, 16)


def test_json_list_and_txt(tmp_path, tok):
    recs = [{"instruction": f"question {i}", "input": "context", "output": "answer"} for i in range(40)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    assert load_calibration(str(tmp_path / "d.json"), tok, 3, 16).input_ids.shape == (3, 16)
    assert load_calibration(str(tmp_path / "d.txt"), tok, 3, 16).input_ids.shape == (3, 16)


def test_too_little_text_reduces_samples_with_a_warning(tmp_path, tok, caplog):
    path = tmp_path / "short.txt"
    path.write_text("print the value of x and return it to the caller. " * 6)
    with caplog.at_level(logging.WARNING):
        calib = load_calibration(str(path), tok, 50, 16)
    assert 1 <= calib.num_samples < 50 and calib.requested_samples == 50
    assert "reducing --num-samples from 50" in caplog.text


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("   \n", "is empty"),
    ("tiny", "fewer than one window"),
])
def test_unusable_text_files_are_one_line_errors(tmp_path, tok, content, message):
    path = tmp_path / "c.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as e:
        load_calibration(str(path), tok, 4, 64)
    assert "\n" not in str(e.value)


def test_bad_sources(tmp_path, tok):
    with pytest.raises(UserError, match="does not exist"):
        load_calibration(str(tmp_path / "missing.jsonl"), tok, 2, 16)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_calibration(str(tmp_path / "bad.json"), tok, 2, 16)
    (tmp_path / "odd.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(UserError, match="instruction"):
        load_calibration(str(tmp_path / "odd.jsonl"), tok, 2, 16)


def test_unreachable_dataset_is_a_user_error(tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="--calib builtin"):
        load_calibration("no-such-org/no-such-dataset", tok, 2, 16)
