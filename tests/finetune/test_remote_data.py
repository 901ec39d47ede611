"""Data and eval sets from anywhere: URLs through a loopback server (json, jsonl), the cache (no second
request), offline and unreachable hosts in one line, pinned hashes, Hub names without network,
data.columns, chat records with the loss on assistant turns only, SKETCHTUNE_DATA precedence, and the
preflight helpers data_problems / task_problems / calib_problems."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from loopback_server import Loopback, only_loopback

from sketchtune_cli import llm_adapters
from sketchtune_cli.compress.calibration import calib_problems, calibration_texts
from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.errors import UserError
from sketchtune_cli.config import RunConfig
from sketchtune_cli.evaluate import registry
from sketchtune_cli.evaluate.stage import data_dir_of
from sketchtune_cli.finetune import data as data_mod
from sketchtune_cli.finetune.data import (
    build_datasets, data_problems, load_source, parse_hub_name, read_records, tokenize_chat,
)
from sketchtune_cli.finetune.settings import DataSettings
from sketchtune_cli.training.batches import IGNORE
from sketchtune_cli.remote import Pin

RECORDS = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}. The answer is {2 * i}."}
           for i in range(6)]


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Network allowed, but only to 127.0.0.1; a private cache; no data dir from the environment."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "SKETCHTUNE_DATA", llm_adapters.BASE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKETCHTUNE_CACHE", str(tmp_path / "cache"))
    only_loopback(monkeypatch)
    return tmp_path


def _json(records) -> bytes:
    return json.dumps(records).encode()


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_url_json_and_jsonl_are_fetched_once_then_cached(online):
    files = {"/d/train.json": _json(RECORDS), "/d/train.jsonl": _jsonl(RECORDS)}
    with Loopback(files) as srv:
        for name in ("train.json", "train.jsonl"):
            url = f"{srv.url}/d/{name}"
            src = load_source(url, limit=4)
            assert src.records == RECORDS[:4]
            assert src.info["sha256"] == hashlib.sha256(files[f"/d/{name}"]).hexdigest()
            assert src.info["verified"] is False  # no pin for an arbitrary URL: recorded, not checked
            assert read_records(url) == RECORDS  # from the cache
        assert dict(srv.requests) == {"/d/train.json": 1, "/d/train.jsonl": 1}


def test_concurrent_processes_fetch_once(online):
    """Ranks starting together: one process downloads, the others wait for its copy."""
    import os
    import subprocess
    import sys

    body = _json(RECORDS)
    go = online / "go"
    with Loopback({"/d.json": body}, delay_s=1.0) as srv:
        code = ("import pathlib, time; from sketchtune_cli.remote import fetch; print('ready', flush=True)\n"
                f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
                f"print(fetch({srv.url + '/d.json'!r}).sha256)")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
                 for _ in range(3)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
        go.touch()  # all three ask at once; the server answers the first after 1 s
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0]
        assert outs == [hashlib.sha256(body).hexdigest()] * 3
        assert srv.requests["/d.json"] == 1


def test_offline_and_unreachable_are_one_line(online, monkeypatch):
    with Loopback({}) as srv:
        with pytest.raises(UserError, match=r"HTTP 404.*data.path=LOCAL_FILE"):
            read_records(f"{srv.url}/missing.json")
        url = f"{srv.url}/gone.json"
    with pytest.raises(UserError, match=r"could not fetch .*unreachable.*data.path=LOCAL_FILE") as e:
        read_records(url)  # the server is stopped: connection refused
    assert "\n" not in str(e.value)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"not in the cache .* HF_DATASETS_OFFLINE is set.*data.path=LOCAL_FILE"):
        read_records(url)


def test_pinned_file_is_verified_and_a_changed_one_refused(online, monkeypatch):
    good, bad = _json(RECORDS), _json(RECORDS[:2])
    rel = "ft-training_set/math_10k.json"
    monkeypatch.setattr(llm_adapters, "pins", lambda: {rel: Pin(sha256=hashlib.sha256(good).hexdigest())})
    public_url = f"{llm_adapters.PUBLIC_BASE}/{rel}"  # what the bundled config writes
    with Loopback({f"/{rel}": bad}) as srv:
        monkeypatch.setenv(llm_adapters.BASE_ENV, srv.url)
        with pytest.raises(UserError, match=r"refusing .*math_10k.json: its sha256 is .* the pin is") as e:
            read_records(public_url)
        assert "\n" not in str(e.value)
        assert not (llm_adapters.local_dir() / rel).exists()  # refused bytes are never cached
        srv.files[f"/{rel}"] = good
        src = load_source(public_url)
        assert src.records == RECORDS and src.info["verified"] is True
        assert srv.requests[f"/{rel}"] == 2


def test_git_blob_pin_verifies_files_without_a_sha256(online, monkeypatch):
    body = _json(RECORDS)
    blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()  # git hash-object
    rel = "dataset/hellaswag/test.json"
    monkeypatch.setattr(llm_adapters, "pins", lambda: {rel: Pin(git_blob_sha1=blob)})
    with Loopback({f"/{rel}": body + b" "}) as srv:
        monkeypatch.setenv(llm_adapters.BASE_ENV, srv.url)
        with pytest.raises(UserError, match="git blob id"):
            registry.fetch_test_file("st_hellaswag")
        srv.files[f"/{rel}"] = body
        assert registry.fetch_test_file("st_hellaswag").read_bytes() == body


def test_shipped_pins_cover_the_bundled_recipes():
    """Every file the math and commonsense configs read has a pin (sha256 or git blob id)."""
    table = llm_adapters.pins()
    for name in registry.GROUPS["st_math"] + registry.GROUPS["st_commonsense"]:
        assert registry.repo_test_file(name) in table, name
    assert table["dataset/gsm8k/test.json"].sha256 == "2cc616a1e0b23ea1df29370476365cde71c4e0aa823fb06cc194c5a8a9381abe"
    assert table["ft-training_set/math_10k.json"].git_blob_sha1 == "27dba77d6ed80aa118d78fbafa5cecd651f6d463"


def test_shipped_pins_match_the_real_files(data_dir):
    """The pins are those of the real LLM-Adapters test files (where the shared copy has them)."""
    from sketchtune_cli.remote import git_blob_sha1, mismatch, sha256_of

    checked = 0
    for name, task in registry.PAPER_TASKS.items():
        path = task.data_file(data_dir)
        pin = llm_adapters.pins().get(registry.repo_test_file(name))
        if path.is_file() and pin:
            assert mismatch(path, sha256_of(path), pin) is None, name
            assert git_blob_sha1(path) == pin.git_blob_sha1
            checked += 1
    assert checked >= 5


def test_hub_names_without_network(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, subset=None, split=None, **kw):
        calls.append((name, subset, split))
        return [{"question": "q", "answer": "a"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert parse_hub_name("openai/gsm8k:main") == ("openai/gsm8k", "main")
    assert parse_hub_name("tatsu-lab/alpaca") == ("tatsu-lab/alpaca", None)
    data = DataSettings(path="openai/gsm8k:main", split="test", columns={"instruction": "question", "output": "answer"})
    assert data_problems(data) == (1, [])
    src = load_source(data.path, data.split)
    assert calls[-1] == ("openai/gsm8k", "main", "test")
    assert src.info == {"path": "openai/gsm8k:main", "hub": "openai/gsm8k", "subset": "main", "split": "test"}

    def offline_load(*a, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline_load)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"HF_(HUB|DATASETS)_OFFLINE is set .* local .json/.jsonl file"):
        read_records("someone/set:sub")


def test_columns_map_other_schemas(tokenizer, tmp_path):
    recs = [{"q": "What is 2 + 2?", "ctx": "", "a": "4"}, {"q": "Name a colour.", "ctx": "one word", "a": "Red"}]
    path = tmp_path / "other.jsonl"
    path.write_bytes(_jsonl(recs))
    data = DataSettings(path=str(path), columns={"instruction": "q", "input": "ctx", "output": "a"}, max_seq_len=256)
    ds = build_datasets(data, tokenizer)
    same = build_datasets(DataSettings(path=str(_alpaca_copy(recs, tmp_path)), max_seq_len=256), tokenizer)
    assert [e.input_ids for e in ds.train] == [e.input_ids for e in same.train]
    assert [e.labels for e in ds.train] == [e.labels for e in same.train]
    # without the mapping every record is a problem, each named with its field
    n, problems = data_problems(DataSettings(path=str(path)))
    assert n == 2 and len(problems) == 4 and "record 1 field 'instruction' is missing" in problems[2]
    with pytest.raises(Exception, match="columns"):
        DataSettings(columns={"prompt": "q"})  # only instruction/input/output/messages can be mapped


def _alpaca_copy(recs, tmp_path) -> Path:
    path = tmp_path / "alpaca.json"
    path.write_bytes(_json([{"instruction": r["q"], "input": r["ctx"], "output": r["a"]} for r in recs]))
    return path


CHAT = [{"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And 4 plus 4?"},
        {"role": "assistant", "content": "That makes 8."}]


def _reference_labels(messages, tokenizer) -> list[int]:
    """Independent: find each assistant reply and the end-of-turn marker after it in the rendered text,
    then label exactly the tokens whose characters fall inside those spans (offset mapping)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, pos = [], 0
    for m in messages:
        start = text.index(m["content"], pos)
        pos = start + len(m["content"])
        if m["role"] == "assistant":
            end = text.index("<|im_end|>", pos) + len("<|im_end|>")
            spans.append((start, end))
    return [tok if any(s <= a and b <= e for s, e in spans) else IGNORE
            for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]


def test_chat_records_loss_on_assistant_turns_only(tokenizer, tmp_path):
    ex = tokenize_chat(CHAT, tokenizer)
    assert ex.labels == _reference_labels(CHAT, tokenizer)
    labeled = tokenizer.decode([t for t in ex.labels if t != IGNORE])
    assert labeled == "It is 5.<|im_end|>That makes 8.<|im_end|>"
    # through a file, with the records' own field name mapped, and problems found per record
    path = tmp_path / "chat.json"
    path.write_bytes(_json([{"conv": CHAT}, {"conv": CHAT[:2]}, {"conv": [{"role": "user"}]}]))
    data = DataSettings(path=str(path), columns={"messages": "conv"}, max_seq_len=512)
    n, problems = data_problems(data)
    assert n == 3 and [p.split(": ", 1)[1] for p in problems] == [
        "record 1 has no assistant message (the loss is on assistant turns only)",
        "record 2 message 0 is not an object with string 'role' and 'content'"]
    path.write_bytes(_json([{"conv": CHAT}]))
    ds = build_datasets(data, tokenizer)
    assert ds.train[0].labels == ex.labels


def test_data_problems_lists_every_problem_capped(tmp_path):
    recs = [{"instruction": "i", "output": "o"}] * 5 + [{"instruction": "i"}] * 30 + ["text"]
    path = tmp_path / "d.json"
    path.write_bytes(_json(recs))
    n, problems = data_problems(DataSettings(path=str(path), limit=34, val_fraction=0.1))
    assert n == 34 and data_mod.held_out_count(n, 0.1) == 3  # read after limit; 3 of them held out
    assert len(problems) == data_mod.PROBLEM_CAP + 1 and problems[-1] == "... and 9 more"
    assert "record 5 field 'output' is missing" in problems[0]
    assert data_problems(DataSettings(path=str(tmp_path / "none.json"))) == (None, [f"data file {tmp_path / 'none.json'} does not exist"])
    assert data_problems(DataSettings(path="demo", limit=50)) == (50, [])


def test_calibration_url_uses_the_same_fetcher(online):
    body = _json(RECORDS)
    with Loopback({"/calib.json": body}) as srv:
        url = f"{srv.url}/calib.json"
        assert calib_problems(CompressSettings(calib=url)) == []
        docs = calibration_texts(url, seed=0, char_budget=10**6)
        assert len(docs) == len(RECORDS) and any("What is 3 + 3?" in d for d in docs)
        read_records(url)  # training data from the same URL: the same cached file
        assert srv.requests["/calib.json"] == 1
        problems = calib_problems(CompressSettings(calib=f"{srv.url}/nope.txt"))
        assert len(problems) == 1 and "HTTP 404" in problems[0]


def test_eval_sets_fetched_verified_and_data_dir_takes_precedence(online, monkeypatch, tmp_path):
    gsm = _json([{"instruction": "1+1?", "input": "", "output": "2", "answer": "2"}])
    monkeypatch.setattr(llm_adapters, "pins", lambda: {"dataset/gsm8k/test.json": Pin(sha256=hashlib.sha256(gsm).hexdigest()),
                                                       "dataset/SVAMP/test.json": Pin(sha256="0" * 64)})
    local = tmp_path / "mine"
    (local / "gsm8k").mkdir(parents=True)
    (local / "gsm8k" / "test.json").write_bytes(_json([{"instruction": "2+2?", "answer": "4"}]))  # not the pinned bytes
    with Loopback({"/dataset/gsm8k/test.json": gsm, "/dataset/SVAMP/test.json": gsm}) as srv:
        monkeypatch.setenv(llm_adapters.BASE_ENV, srv.url)
        # $SKETCHTUNE_DATA (or --data-dir) wins and is read as it is, offline: nothing is fetched
        monkeypatch.setenv("SKETCHTUNE_DATA", str(local))
        assert registry.resolve_data_dir(["st_gsm8k"], data_dir_of(RunConfig())) == str(local)
        monkeypatch.delenv("SKETCHTUNE_DATA")
        assert registry.resolve_data_dir(["st_gsm8k"], str(local)) == str(local)
        assert task_problems_for(["st_gsm8k"], str(local)) == []
        assert srv.total == 0
        # without one: fetched into the cache, verified, once
        fetched = Path(registry.resolve_data_dir(["st_gsm8k"], None))
        assert (fetched / "gsm8k" / "test.json").read_bytes() == gsm
        assert registry.resolve_data_dir(["st_gsm8k"], None) == str(fetched) and srv.total == 1
        problems = task_problems_for(["math", "st_nope"], None)
    assert any("unknown task 'st_nope'" in p for p in problems)
    assert any(p.startswith("refusing") and "SVAMP" in p and "--data-dir" in p for p in problems)
    assert any("st_addsub" in p and "no pinned hash" in p for p in problems)  # not in this test's pin table
    assert not any("gsm8k" in p for p in problems)
    missing = task_problems_for(["st_svamp"], str(local))
    assert len(missing) == 1 and "SVAMP/test.json not found" in missing[0]


def task_problems_for(tasks, data_dir):
    return registry.task_problems(tasks, data_dir)
