"""Calibration data for compress: N deterministic windows of L tokens from a named source.

Sources: ``builtin`` (CPython's ``pydoc_data.topics``, always present offline), ``c4`` (allenai/c4, the
first English validation shard), ``wikitext`` (wikitext-2-raw train), any other Hugging Face dataset name
(``name`` or ``name:config``, column ``text``), or a ``.txt`` / ``.json`` / ``.jsonl`` file, local or at an
http(s) URL (fetched once into the cache by the same fetcher as training data). JSON
records in the alpaca / LLM-Adapters shape (``instruction``, ``input``, ``output``) are rendered with the
fine-tuning prompt (``prompts.render_alpaca``), so compress calibrates on what fine-tuning will feed.

Documents are shuffled with the seed, tokenized, joined with EOS into one stream, cut into non-overlapping
windows of ``seq_len`` tokens, and ``num_samples`` of them are drawn with the seed: the same inputs give the
same windows on every rank and every run (resume relies on it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError, describe
from ..prompts import render_alpaca
from ..remote import Fetched, is_url
from ..textfiles import read_text

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".txt", ".json", ".jsonl")
# Hugging Face datasets behind the short names: (path, config, split, data_files).
HF_SOURCES = {
    "c4": ("allenai/c4", None, "validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"}),
    "wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", None),
}
CHARS_PER_TOKEN_BUDGET = 8  # read ~2x more text than N*L tokens need (about 4 chars per token)


@dataclass
class Calibration:
    input_ids: torch.Tensor  # [num_samples, seq_len], int64
    source: str
    requested_samples: int
    stream_tokens: int
    fetched: dict | None = None  # a URL source: the sha256 of the file read (and whether it matched a pin)

    @property
    def num_samples(self) -> int:
        return self.input_ids.shape[0]

    def describe(self) -> dict:
        return {"source": self.source, "num_samples": self.num_samples, "seq_len": self.input_ids.shape[1],
                "requested_samples": self.requested_samples, "stream_tokens": self.stream_tokens} | (
            {"fetched": self.fetched} if self.fetched else {})


def load_calibration(source: str, tokenizer, num_samples: int, seq_len: int, seed: int = 0,
                     encoding: str = "utf-8") -> Calibration:
    """Token windows ``[N, L]`` from ``source`` (see the module docstring). Fewer windows than asked is a
    logged reduction of N; not even one window is a UserError."""
    budget = num_samples * seq_len * CHARS_PER_TOKEN_BUDGET
    while True:  # read more text only when the tokenizer packs more characters per token than assumed
        docs = calibration_texts(source, seed, budget, encoding)
        stream = tokenize_stream(docs, tokenizer)
        if len(stream) >= num_samples * seq_len or sum(map(len, docs)) < budget:
            break
        budget *= 4
    ids = draw_windows(stream, num_samples, seq_len, seed, source)
    fetched = fetch_calibration_file(source).describe() if is_url(source) else None  # cached: no second fetch
    return Calibration(ids, source, num_samples, len(stream), fetched)


def calibration_texts(source: str, seed: int, char_budget: int, encoding: str = "utf-8") -> list[str]:
    """The documents of a source, shuffled with ``seed`` and cut to about ``char_budget`` characters."""
    if source == "builtin":
        docs = builtin_texts()
    elif (path := _local_file(source)) is not None:
        docs = file_texts(path, encoding)
    else:
        docs = hf_texts(source, seed, char_budget)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"calibration source {source} holds no text; give a non-empty file or another --calib")
    if len(docs) > 1:
        random.Random(seed).shuffle(docs)
    return _take_chars(docs, char_budget)


def _local_file(source: str) -> Path | None:
    """The file a source names: a URL's cached copy (fetched if needed), a local file; None for a dataset."""
    if is_url(source):
        return fetch_calibration_file(source).path
    p = Path(source).expanduser()
    if p.suffix.lower() in LOCAL_SUFFIXES:
        if not p.is_file():
            raise UserError(f"calibration file {p} does not exist")
        return p
    if p.exists():
        raise UserError(f"calibration file {p} must end in .txt, .json or .jsonl")
    return None


def fetch_calibration_file(url: str) -> Fetched:
    """The cached copy of a calibration file named by URL (the fetcher training data uses; LLM-Adapters
    files are verified against their pins)."""
    from ..llm_adapters import fetch_url

    if Path(urllib.parse.urlsplit(url).path).suffix.lower() not in LOCAL_SUFFIXES:
        raise UserError(f"calibration URL {url} must name a .txt, .json or .jsonl file")
    return fetch_url(url, instead="download it and pass --calib LOCAL_FILE (or compress.calib=LOCAL_FILE)")


def calib_problems(compress) -> list[str]:
    """For a preflight: whether the ``compress`` section's calibration source can be read (a file or URL
    is read and parsed, fetching into the cache if needed; a dataset name is resolved). Loads no model."""
    source = compress.calib
    try:
        if source == "builtin":
            return []
        if (path := _local_file(source)) is not None:
            file_texts(path, compress.calib_encoding)
        else:
            _check_hf_source(source)
    except UserError as e:
        return [str(e)]
    return []


def _check_hf_source(source: str) -> None:
    """Resolve a dataset name the way :func:`hf_texts` loads it, without downloading its data."""
    name, _, config = source.partition(":")
    path, cfg, _split, files = HF_SOURCES.get(name, (name, config or None, "train", None))
    try:
        import datasets

        datasets.load_dataset_builder(path, cfg, data_files=files)
    except Exception as e:
        raise UserError(
            f"could not resolve calibration dataset {source!r} ({describe(e, 160)}); "
            f"check the name or use --calib builtin or a local .txt/.json/.jsonl file or URL"
        ) from None


def _take_chars(docs: list[str], budget: int) -> list[str]:
    out, total = [], 0
    for d in docs:
        if total >= budget:
            break
        out.append(d)
        total += len(d)
    return out


def builtin_texts() -> list[str]:
    """CPython's pydoc topic help (about 465k characters), one document per topic, in key order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def file_texts(path: Path, encoding: str = "utf-8") -> list[str]:
    """A .txt file is one document; .json (a list) and .jsonl (one per line) hold records. Text that is not
    valid in ``encoding`` is refused (see :mod:`textfiles`), never replaced."""
    text = read_text(path, encoding, "calibration file", "compress.calib_encoding")
    if not text.strip():
        raise UserError(f"calibration file {path} is empty; give a file with text")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [text]
    if suffix == ".jsonl":
        records = [_parse_json(line, path, i + 1) for i, line in enumerate(text.splitlines()) if line.strip()]
    else:
        records = _parse_json(text, path)
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise UserError(f"{path} must hold a JSON list of records (instruction/input/output or text)")
    return [record_text(r, path) for r in records]


def _parse_json(text: str, path: Path, line: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f" line {line}" if line else ""
        raise UserError(f"{path}{where} is not valid JSON ({e.msg})") from None


def record_text(record, path: Path) -> str:
    """Alpaca-style records become the fine-tuning prompt with their output; others need ``text``."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and "instruction" in record:
        return render_alpaca(record["instruction"], record.get("input"), record.get("output") or "")
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    raise UserError(f"{path}: records need `instruction` (+ `input`, `output`) or `text` fields")


def hf_texts(source: str, seed: int, char_budget: int) -> list[str]:
    """Documents of a Hugging Face dataset (``name`` or ``name:config``), column ``text``."""
    name, _, config = source.partition(":")
    path, cfg, split, files = HF_SOURCES.get(name, (name, config or None, "train", None))
    try:
        import datasets

        ds = datasets.load_dataset(path, cfg, split=split, data_files=files)
    except Exception as e:  # offline, unknown name, gated...: all one-line user errors
        raise UserError(
            f"could not load calibration dataset {source!r} ({describe(e, 160)}); "
            f"check the name or use --calib builtin or a local .txt/.json/.jsonl file or URL"
        ) from None
    if "text" not in ds.column_names:
        raise UserError(f"calibration dataset {source!r} has no `text` column (columns: {', '.join(ds.column_names)})")
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    docs, total = [], 0
    for i in order:  # read only what the budget needs: c4's shard alone has 45k documents
        text = ds[i]["text"]
        if text and text.strip():
            docs.append(text)
            total += len(text)
        if total >= char_budget:
            break
    return docs


def tokenize_stream(docs: list[str], tokenizer) -> list[int]:
    """All documents as one token stream, each followed by EOS (no BOS: windows start mid-stream)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    with _quiet_transformers():  # long documents trip the "longer than model_max_length" warning
        encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        stream.extend(eos)
    return stream


@contextlib.contextmanager
def _quiet_transformers():
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def draw_windows(stream: list[int], num_samples: int, seq_len: int, seed: int, source: str = "calibration") -> torch.Tensor:
    """``num_samples`` non-overlapping windows of ``seq_len`` tokens chosen with ``seed`` (in stream order)."""
    available = len(stream) // seq_len
    if available == 0:
        raise UserError(
            f"calibration source {source} gives {len(stream)} tokens, fewer than one window of --seq-len "
            f"{seq_len}; give more text or lower --seq-len"
        )
    if available < num_samples:
        log.warning("calibration: %s gives %d tokens, enough for only %d windows of %d tokens; "
                    "reducing --num-samples from %d to %d", source, len(stream), available, seq_len,
                    num_samples, available)
        num_samples = available
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(available, generator=g)[:num_samples].sort().values
    ids = torch.tensor(stream[: available * seq_len], dtype=torch.long).view(available, seq_len)
    return ids[picks].contiguous()
