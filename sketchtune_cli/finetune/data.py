"""Training data: records -> prompt/response token ids with labels only on the response.

Sources: LLM-Adapters / alpaca records (``instruction``, optional ``input``, ``output``) from a JSON array
or JSONL file, a Hugging Face dataset by name, or ``demo`` (generated arithmetic problems). Rendering uses
the one alpaca template of :mod:`sketchtune_cli.prompts` (METHOD.md §3) or the tokenizer's chat template.
The loss covers the response and the appended EOS; the prompt and padding carry label -100.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..prompts import render_alpaca
from ..textfiles import read_text
from .demo_data import demo_records

log = logging.getLogger(__name__)

IGNORE = -100
REQUIRED = ("instruction", "output")
DEMO = "demo"
DEMO_SIZES = {"train": 2000, "test": 200}


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        """Tokens that carry loss (labels are shifted by one inside the loss, so the first never counts)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


@dataclass
class Datasets:
    train: list[Example]
    val: list[Example] | None
    stats: dict = field(default_factory=dict)


# ---- reading records ---------------------------------------------------------------------------------

def _read_json_file(path: Path, encoding: str = "utf-8") -> list:
    text = read_text(path, encoding, "data file", "data.encoding")
    try:
        if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON/JSONL (line {e.lineno}: {e.msg})") from None


def _read_hf_dataset(name: str, split: str) -> list:
    try:
        import datasets

        return list(datasets.load_dataset(name, split=split))
    except Exception as e:  # offline, unknown name, gated...
        raise UserError(
            f"data {name!r} is not a local file and could not be loaded as a Hugging Face dataset "
            f"({type(e).__name__}); give a .json/.jsonl path, a reachable dataset name, or 'demo'"
        ) from None


def read_records(source: str, split: str = "train", limit: int | None = None, seed: int = 0,
                 encoding: str = "utf-8") -> list[dict]:
    """Records of ``source``: a file, ``demo`` (``split`` picks train or held-out problems) or a HF dataset."""
    if source == DEMO:
        return demo_records(split, n=limit or DEMO_SIZES[split], seed=seed)
    path = Path(source).expanduser()
    if path.is_file():
        records = _read_json_file(path, encoding)
    elif path.is_dir():
        raise UserError(f"data file {source} is a directory; give a .json/.jsonl file")
    elif path.suffix in (".json", ".jsonl") or source.startswith((".", "/", "~")) or path.exists():
        raise UserError(f"data file {source} does not exist")
    else:
        records = _read_hf_dataset(source, split)
    if not isinstance(records, list):
        raise UserError(f"{source} must hold a JSON array (or JSONL) of records")
    return records[:limit] if limit else records


def check_records(records: list, source: str) -> None:
    """Every record must be a mapping with string ``instruction`` and ``output`` (``input`` optional)."""
    if not records:
        raise UserError(f"{source} holds no records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise UserError(f"{source}: record {i} is a {type(rec).__name__}, expected an object with instruction/output")
        for key in REQUIRED:
            if not isinstance(rec.get(key), str):
                what = "is missing" if key not in rec else f"is not a string ({type(rec[key]).__name__})"
                raise UserError(f"{source}: record {i} field '{key}' {what}; records need instruction and output (input optional)")
        if rec.get("input") is not None and not isinstance(rec["input"], str):
            raise UserError(f"{source}: record {i} field 'input' is not a string")


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


def tokenize_records(records: list[dict], tokenizer, template: str, max_seq_len: int) -> tuple[list[Example], dict]:
    """Examples truncated to ``max_seq_len``; ones left with no response token are dropped (counted)."""
    out, truncated, dropped = [], 0, 0
    for rec in records:
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
    n_val = max(1, round(len(records) * fraction))
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val_idx], [records[i] for i in sorted(val_idx)]


def build_datasets(data, tokenizer, seed: int = 0) -> Datasets:
    """Tokenized train (and validation) examples for a ``data:`` section."""
    if not data.path:
        raise UserError("no training data: set data.path (a .json/.jsonl file, a dataset name, or demo) or pass --data")
    records = read_records(data.path, "train", data.limit, seed, data.encoding)
    check_records(records, data.path)
    val_records = None
    if data.val_path:
        val_records = read_records(data.val_path, "test", data.val_limit, seed, data.encoding)
        check_records(val_records, data.val_path)
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
    return Datasets(train, val, stats)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding gets attention 0 and label -100 (causal attention keeps real tokens'
    logits independent of the padding after them)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
