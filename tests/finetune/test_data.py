"""Data: rendering with the paper's template, response-only labels, truncation, errors, demo data, order."""
from __future__ import annotations

import json
import re

import pytest

from sketchtune_cli.errors import UserError
from sketchtune_cli.finetune.data import (
    build_datasets, check_records, read_records, render, tokenize_example, tokenize_records,
)
from sketchtune_cli.finetune.demo_data import demo_records
from sketchtune_cli.training.batches import IGNORE, collate
from sketchtune_cli.training.order import DataOrder, micro_batches, shard
from sketchtune_cli.finetune.settings import DataSettings

PAPER_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def _ex(tokenizer, rec, template="alpaca"):
    return tokenize_example(*render(rec, template, tokenizer), tokenizer, template)


def test_alpaca_masking_matches_hand_built(tokenizer):
    rec = {"instruction": "What is 2 + 3?", "input": "", "output": "2 + 3 = 5. The answer is 5."}
    prompt = PAPER_PROMPT.format(instruction=rec["instruction"])
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(rec["output"], add_special_tokens=False)["input_ids"]
    ex = _ex(tokenizer, rec)
    assert ex.input_ids == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert ex.labels == [IGNORE] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]


def test_boundary_merge_never_leaks_prompt(tokenizer):
    """Math10K outputs start with a newline that merges with the prompt's last one: the merged token is
    the only prompt text that may carry loss, and the whole output + EOS always does."""
    rec = {"instruction": "Add 4 and 5.", "output": "\nA: 4 + 5 = 9. The answer is 9."}
    ex = _ex(tokenizer, rec)
    labeled = [t for t in ex.labels if t != IGNORE]
    text = tokenizer.decode(labeled)
    assert text.endswith(rec["output"] + tokenizer.eos_token)
    assert len(text) <= len(rec["output"] + tokenizer.eos_token) + 1
    n_prompt = ex.labels.index(labeled[0])
    assert tokenizer.decode(ex.input_ids[:n_prompt]) + text == PAPER_PROMPT.format(instruction=rec["instruction"]) + rec["output"] + tokenizer.eos_token


def test_input_field_uses_input_template(tokenizer):
    prompt, full = render({"instruction": "Sum these.", "input": "1 2 3", "output": "6"}, "alpaca", tokenizer)
    assert "paired with an input" in prompt and "### Input:\n1 2 3\n\n### Response:\n" in prompt
    assert full == prompt + "6"


def test_chat_template_labels_cover_the_reply(tokenizer):
    rec = {"instruction": "Say hi.", "output": "Hi there!"}
    ex = _ex(tokenizer, rec, "chat")
    labeled = tokenizer.decode([t for t in ex.labels if t != IGNORE])
    assert labeled.strip().endswith("Hi there!<|im_end|>")
    assert "Say hi." not in labeled
    assert ex.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_counts_and_drops(tokenizer):
    recs = [{"instruction": "x " * 200, "output": "y"}, {"instruction": "short", "output": "ok " * 50}, {"instruction": "a", "output": "b"}]
    examples, stats = tokenize_records(recs, tokenizer, "alpaca", max_seq_len=48)
    assert stats == {"records": 3, "truncated": 2, "dropped": 1}
    assert len(examples) == 2 and all(len(e.input_ids) <= 48 for e in examples)


def test_collate_pads_with_ignored_labels(tokenizer):
    a, b = _ex(tokenizer, {"instruction": "a", "output": "b"}), _ex(tokenizer, {"instruction": "longer one", "output": "c d e"})
    batch = collate([a, b], pad_id=7)
    n = len(a.input_ids)
    assert batch["input_ids"].shape[1] == max(n, len(b.input_ids))
    assert (batch["labels"][0, n:] == IGNORE).all() and (batch["attention_mask"][0, n:] == 0).all()
    assert (batch["input_ids"][0, n:] == 7).all()
    assert batch["labels"][1].tolist() == b.labels


@pytest.mark.parametrize("rec,field", [({"input": "", "output": "o"}, "instruction"), ({"instruction": "i", "answer": "1"}, "output"),
                                      ({"instruction": "i", "output": 3}, "output")])
def test_missing_field_is_one_line_error(rec, field):
    records = [{"instruction": "fine", "output": "fine"}] * 3 + [rec]
    with pytest.raises(UserError) as e:
        check_records(records, "data.json")
    msg = str(e.value)
    assert "record 3" in msg and f"'{field}'" in msg and "\n" not in msg


def test_json_and_jsonl_files(tmp_path):
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert read_records(str(tmp_path / "d.json")) == recs
    assert read_records(str(tmp_path / "d.jsonl"), limit=2) == recs[:2]
    with pytest.raises(UserError, match="does not exist"):
        read_records(str(tmp_path / "nope.json"))


def test_val_fraction_and_demo_val(tokenizer):
    ds = build_datasets(DataSettings(path="demo", limit=40, val_fraction=0.25, max_seq_len=128), tokenizer, seed=1)
    assert len(ds.train) == 30 and len(ds.val) == 10
    ds = build_datasets(DataSettings(path="demo", limit=20, val_path="demo", val_limit=8, max_seq_len=128), tokenizer)
    assert len(ds.train) == 20 and len(ds.val) == 8


def test_demo_data_exact_answers_and_disjoint_splits():
    train, test = demo_records("train", 300, seed=3), demo_records("test", 60, seed=3)
    assert demo_records("train", 300, seed=3) == train  # seeded
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    for rec in train + test:
        assert set(rec) == {"instruction", "input", "output", "answer"}
        exprs = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", rec["output"])
        assert exprs
        for a, op, b, c in exprs:
            assert eval(f"{a} {op} {b}") == int(c)
        last = float(re.findall(r"\d+", rec["output"])[-1])
        assert last == float(rec["answer"]) == int(exprs[-1][3])


def test_order_is_deterministic_and_independent_of_world():
    order = DataOrder(10, seed=5)
    batches = [order.global_batch(s, 4) for s in range(5)]  # 20 positions = two epochs
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert [DataOrder(10, seed=5).global_batch(s, 4) for s in range(5)] == batches
    for b in batches:
        assert shard(b, 0, 2) + shard(b, 1, 2) == b
    assert micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
