"""Training data: records -> prompt/response token ids with labels only on the response.

Sources: a JSON array or JSONL file, local or at an http(s) URL (fetched once into the cache), a Hugging
Face dataset ``name[:subset]``, or ``demo`` (generated arithmetic problems). Records are LLM-Adapters /
alpaca (``instruction``, optional ``input``, ``output``; ``data.columns`` maps other field names onto
these) or chat (``messages``: a list of {role, content}). Alpaca records use the one alpaca template of
:mod:`sketchtune_cli.prompts` (docs/method.md §3) or the tokenizer's chat template; chat records always use the
chat template. The loss covers the responses (and the appended EOS or end-of-turn marker); the prompt,
user turns and padding carry label -100.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, one_line
from ..prompts import render_alpaca
from ..textfiles import read_text
from ..training.batches import IGNORE, Datasets, Example
from .demo_data import demo_records

log = logging.getLogger(__name__)

DEMO = "demo"
DEMO_SIZES = {"train": 2000, "test": 200}
NO_TRAINING_DATA = "no training data: set data.path (a .json/.jsonl file or URL, a dataset name, or demo) or pass --data"


# ---- reading records ---------------------------------------------------------------------------------

PROBLEM_CAP = 20  # data_problems lists this many, then "... and N more"


@dataclass
class Source:
    records: list
    info: dict  # what was read: {"path": ...} plus url/sha256/verified, or the Hub name/split


def _read_json_file(path: Path, name: str | None = None, encoding: str = "utf-8") -> list:
    text = read_text(path, encoding, "data file", "data.encoding")
    try:
        if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{name or path} is not valid JSON/JSONL (line {e.lineno}: {e.msg})") from None


def parse_hub_name(source: str) -> tuple[str, str | None]:
    """``name`` or ``name:subset`` (e.g. ``openai/gsm8k:main``) -> (name, subset or None)."""
    name, _, subset = source.partition(":")
    return name, subset or None


def _read_hf_dataset(source: str, name: str, subset: str | None, split: str) -> list:
    from ..remote import offline

    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(name, subset, split=split)]
    except Exception as e:  # offline, unknown name, gated, unknown split...
        var = offline()
        why = f"{var} is set and it is not in the datasets cache" if var else one_line(f"{type(e).__name__}: {e}", 160)
        raise UserError(
            f"data {source!r} is not a local file and could not be loaded as a Hugging Face dataset "
            f"(name[:subset], split {split!r}; {why}); give a local .json/.jsonl file, an http(s) URL, a "
            f"reachable dataset name, or 'demo'"
        ) from None


def load_source(source: str, split: str = "train", limit: int | None = None, seed: int = 0,
                encoding: str = "utf-8") -> Source:
    """Records of ``source`` with where they came from: a local .json/.jsonl file, an http(s) URL of one
    (fetched once into the cache, see :mod:`sketchtune_cli.remote`), ``demo`` (``split`` picks train or
    held-out problems) or a Hugging Face dataset ``name[:subset]`` (``split``). Files are decoded with
    ``encoding``; invalid bytes are refused."""
    from ..llm_adapters import fetch_url
    from ..remote import is_url

    if source == DEMO:
        return Source(demo_records(split, n=limit or DEMO_SIZES[split], seed=seed), {"path": DEMO})
    if is_url(source):
        got = fetch_url(source, instead="download it and pass data.path=LOCAL_FILE (or --data LOCAL_FILE)")
        records, info = _read_json_file(got.path, source, encoding), {"path": source, **got.describe()}
    else:
        path = Path(source).expanduser()
        if path.is_file():
            records, info = _read_json_file(path, encoding=encoding), {"path": str(path.resolve())}
        elif path.is_dir():
            raise UserError(f"data file {source} is a directory; give a .json/.jsonl file")
        elif path.suffix in (".json", ".jsonl") or source.startswith((".", "/", "~")) or path.exists():
            raise UserError(f"data file {source} does not exist")
        else:
            name, subset = parse_hub_name(source)
            records, info = _read_hf_dataset(source, name, subset, split), {"path": source, "hub": name, "subset": subset, "split": split}
    if not isinstance(records, list):
        raise UserError(f"{source} must hold a JSON array (or JSONL) of records")
    return Source(records[:limit] if limit else records, info)


def read_records(source: str, split: str = "train", limit: int | None = None, seed: int = 0,
                 encoding: str = "utf-8") -> list[dict]:
    """Records of ``source`` (see :func:`load_source`)."""
    return load_source(source, split, limit, seed, encoding).records


def _field(columns: dict | None, name: str) -> str:
    return (columns or {}).get(name, name)


def record_problems(records: list, source: str, columns: dict | None = None) -> list[str]:
    """Every problem of every record, one line each: alpaca records need string ``instruction`` and
    ``output`` (``input`` optional), chat records a ``messages`` list of {role, content} with an assistant
    turn; ``columns`` renames the fields read."""
    if not records:
        return [f"{source} holds no records"]
    problems = []
    msg_key = _field(columns, "messages")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            problems.append(f"{source}: record {i} is a {type(rec).__name__}, expected an object with instruction/output or messages")
        elif msg_key in rec:
            problems += [f"{source}: record {i} {p}" for p in _chat_problems(rec[msg_key], msg_key)]
        else:
            problems += [f"{source}: record {i} {p}" for p in _alpaca_problems(rec, columns)]
    return problems


def _alpaca_problems(rec: dict, columns: dict | None) -> list[str]:
    out = []
    for name in ("instruction", "output"):
        key = _field(columns, name)
        hint = f" (data.columns.{name})" if key != name else ""
        if key not in rec or rec[key] is None:
            out.append(f"field '{key}'{hint} is missing; records need instruction and output (input optional) or messages")
        elif not isinstance(rec[key], str):
            out.append(f"field '{key}'{hint} is not a string ({type(rec[key]).__name__})")
    key = _field(columns, "input")
    if rec.get(key) is not None and not isinstance(rec[key], str):
        out.append(f"field '{key}' is not a string ({type(rec[key]).__name__})")
    return out


def _chat_problems(messages, key: str) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [f"field '{key}' is not a non-empty list of {{role, content}} messages"]
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return [f"message {j} is not an object with string 'role' and 'content'"]
    if not any(m["role"] == "assistant" for m in messages):
        return ["has no assistant message (the loss is on assistant turns only)"]
    return []


def capped(problems: list[str], cap: int = PROBLEM_CAP) -> list[str]:
    return problems if len(problems) <= cap else problems[:cap] + [f"... and {len(problems) - cap} more"]


def held_out_count(n: int, fraction: float) -> int:
    """Records ``_split`` holds out for validation."""
    return max(1, round(n * fraction)) if fraction > 0 and n else 0


def check_records(records: list, source: str, columns: dict | None = None) -> None:
    """Raise the first problem of :func:`record_problems` (with how many more there are) as one line."""
    problems = record_problems(records, source, columns)
    if problems:
        more = f" (and {len(problems) - 1} more problems: `sketchtune run --dry-run` lists them)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def normalize(rec: dict, columns: dict | None) -> dict:
    """A checked record under the canonical names: {messages} or {instruction, input, output}."""
    if _field(columns, "messages") in rec:
        return {"messages": rec[_field(columns, "messages")]}
    return {"instruction": rec[_field(columns, "instruction")], "input": rec.get(_field(columns, "input")) or "",
            "output": rec[_field(columns, "output")]}


def data_problems(data) -> tuple[int | None, list[str]]:
    """For a preflight: read the ``data`` section's records exactly as the run will (fetching into the
    cache if needed; no tokenizer or model) and check every one. Returns (records the run reads after
    ``limit``, before ``held_out_count`` of them go to validation; or None when unreadable; every problem,
    one line each, capped)."""
    if not data.path:
        return None, [NO_TRAINING_DATA]
    n, problems = _source_problems(data.path, data.split, data.limit, data)
    if data.val_path:  # checked even when the training data is unreadable: every problem at once
        problems += _source_problems(data.val_path, "test", data.val_limit, data)[1]
    return n, capped(problems)


def _source_problems(source: str, split: str, limit: int | None, data) -> tuple[int | None, list[str]]:
    try:
        records = read_records(source, split, limit, encoding=data.encoding)
    except UserError as e:
        return None, [str(e)]
    return len(records), record_problems(records, source, data.columns)


# ---- rendering and tokenizing ------------------------------------------------------------------------

def render(record: dict, template: str, tokenizer) -> tuple[str, str]:
    """(prompt text, prompt + response text) for one record."""
    instruction, inp, output = record["instruction"], record.get("input") or "", record["output"]
    if template == "alpaca":
        return render_alpaca(instruction, inp), render_alpaca(instruction, inp, output)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("data.template is chat but the tokenizer has no chat template; use data.template=alpaca")
    user = [{"role": "user", "content": instruction + (f"\n\n{inp}" if inp.strip() else "")}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": output}], tokenize=False)
    return prompt, full.rstrip()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_example(prompt: str, full: str, tokenizer, template: str) -> Example:
    """Tokenize the whole text once (as it is seen at inference) and mask the prompt's tokens. The prompt
    length is the common prefix of the prompt's and the full text's ids, so a merge across the boundary
    can never leak prompt tokens into the loss."""
    specials = template == "alpaca"  # a chat template already writes its special tokens
    full_ids = tokenizer(full, add_special_tokens=specials)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=specials)["input_ids"]
    n_prompt = _common_prefix(prompt_ids, full_ids)
    eos = tokenizer.eos_token_id
    ids = list(full_ids) if full_ids and full_ids[-1] == eos else list(full_ids) + [eos]
    labels = [IGNORE] * n_prompt + ids[n_prompt:]
    return Example(ids, labels)


def tokenize_chat(messages: list[dict], tokenizer) -> Example:
    """A conversation rendered with the tokenizer's chat template, the loss on every assistant turn (its
    content and end-of-turn marker) and nowhere else. Each turn's span is where the conversation up to it
    (with the assistant header) and through it diverge from the whole text's ids, by the same common-prefix
    rule as single-turn records."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the data holds chat records (messages) but the tokenizer has no chat template; "
                        "use a chat model or alpaca records (instruction/input/output)")

    def text(msgs: list[dict], **kw) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, **kw)

    def ids(t: str) -> list[int]:  # the template writes its own special tokens
        return tokenizer(t, add_special_tokens=False)["input_ids"]

    full_ids = ids(text(messages))
    labels = [IGNORE] * len(full_ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _common_prefix(ids(text(messages[:i], add_generation_prompt=True)), full_ids)
        end = _common_prefix(ids(text(messages[: i + 1]).rstrip()), full_ids)  # through the end-of-turn marker
        labels[start:end] = full_ids[start:end]
    return Example(list(full_ids), labels)


def tokenize_records(records: list[dict], tokenizer, template: str, max_seq_len: int) -> tuple[list[Example], dict]:
    """Examples truncated to ``max_seq_len``; ones left with no response token are dropped (counted).
    Chat records (``messages``) always use the chat template; the others use ``template``."""
    out, truncated, dropped = [], 0, 0
    for rec in records:
        if "messages" in rec:
            ex = tokenize_chat(rec["messages"], tokenizer)
        else:
            ex = tokenize_example(*render(rec, template, tokenizer), tokenizer, template)
        if len(ex.input_ids) > max_seq_len:
            truncated += 1
            ex = Example(ex.input_ids[:max_seq_len], ex.labels[:max_seq_len])
        if ex.n_targets == 0:
            dropped += 1
            continue
        out.append(ex)
    return out, {"records": len(records), "truncated": truncated, "dropped": dropped}


def _split(records: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = held_out_count(len(records), fraction)
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val_idx], [records[i] for i in sorted(val_idx)]


def build_datasets(data, tokenizer, seed: int = 0) -> Datasets:
    """Tokenized train (and validation) examples for a ``data:`` section."""
    if not data.path:
        raise UserError(NO_TRAINING_DATA)
    source = load_source(data.path, data.split, data.limit, seed, data.encoding)
    check_records(source.records, data.path, data.columns)
    records = [normalize(r, data.columns) for r in source.records]
    val_records, val_info = None, None
    if data.val_path:
        val_source = load_source(data.val_path, "test", data.val_limit, seed, data.encoding)
        check_records(val_source.records, data.val_path, data.columns)
        val_records, val_info = [normalize(r, data.columns) for r in val_source.records], val_source.info
    elif data.val_fraction > 0:
        records, val_records = _split(records, data.val_fraction, seed)
        val_records = val_records[: data.val_limit] if data.val_limit else val_records
    train, stats = tokenize_records(records, tokenizer, data.template, data.max_seq_len)
    if not train:
        raise UserError(f"{data.path}: no record keeps a response token within data.max_seq_len={data.max_seq_len}; raise it")
    if stats["truncated"] or stats["dropped"]:
        log.warning("%d of %d records truncated to %d tokens (%d dropped: no response token left)",
                    stats["truncated"], stats["records"], data.max_seq_len, stats["dropped"])
    val = None
    if val_records:
        val, vstats = tokenize_records(val_records, tokenizer, data.template, data.max_seq_len)
        stats["val_records"] = vstats["records"]
    stats["train_examples"] = len(train)
    stats["train_target_tokens"] = sum(e.n_targets for e in train)
    stats["source"] = source.info  # the file read, with its sha256 when it was fetched
    if val_info:
        stats["val_source"] = val_info
    return Datasets(train, val, stats)
