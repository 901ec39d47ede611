"""The `demo` data source: templated arithmetic word problems with exact answers.

Records follow the LLM-Adapters format (``instruction``, ``input``, ``output``, ``answer``), so the demo
exercises the same rendering, training and math-answer scoring as Math10K, with no files and no network.
A problem's split is decided by a hash of its text, so the train and held-out splits never share a
problem, whatever seed or size is asked for.
"""
from __future__ import annotations

import hashlib
import random

NAMES = ["Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "shells", "cards", "stamps"]
SPLITS = ("train", "test")
HELD_OUT_BUCKETS = 10  # one text hash bucket in ten is held out


def _add(r: random.Random) -> tuple[str, str, int]:
    n, it, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 60), r.randint(2, 60)
    q = f"{n} has {a} {it}. {n} gets {b} more {it}. How many {it} does {n} have now?"
    return q, f"{n} starts with {a} {it} and gets {b} more, so {a} + {b} = {a + b}.", a + b


def _sub(r: random.Random) -> tuple[str, str, int]:
    n, it, a = r.choice(NAMES), r.choice(ITEMS), r.randint(10, 90)
    b = r.randint(1, a - 1)
    q = f"{n} had {a} {it} and gave away {b} of them. How many {it} does {n} have left?"
    return q, f"{n} had {a} {it} and gave away {b}, so {a} - {b} = {a - b}.", a - b


def _mul(r: random.Random) -> tuple[str, str, int]:
    n, it, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 12), r.randint(2, 12)
    q = f"{n} buys {a} boxes with {b} {it} in each box. How many {it} does {n} buy in total?"
    return q, f"There are {a} boxes with {b} {it} each, so {a} * {b} = {a * b}.", a * b


def _div(r: random.Random) -> tuple[str, str, int]:
    n, it, per, k = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 12), r.randint(2, 9)
    total = per * k
    q = f"{n} shares {total} {it} equally among {k} friends. How many {it} does each friend get?"
    return q, f"{total} {it} shared among {k} friends gives {total} / {k} = {per} each.", per


def _two_step(r: random.Random) -> tuple[str, str, int]:
    n, it, a, b, c = r.choice(NAMES), r.choice(ITEMS), r.randint(5, 40), r.randint(2, 30), r.randint(1, 5)
    q = (f"{n} has {a} {it}, buys {b} more, then loses {c}. How many {it} does {n} have?")
    mid = a + b
    return q, f"First {a} + {b} = {mid}. Then {mid} - {c} = {mid - c}.", mid - c


TEMPLATES = [_add, _sub, _mul, _div, _two_step]


def _split_of(question: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % HELD_OUT_BUCKETS
    return "test" if bucket == 0 else "train"


def demo_record(r: random.Random) -> dict:
    question, reasoning, answer = r.choice(TEMPLATES)(r)
    output = f"\nA: {reasoning} The answer is {answer}."
    return {"instruction": question, "input": "", "output": output, "answer": f"{float(answer)}"}


def demo_records(split: str = "train", n: int = 2000, seed: int = 0) -> list[dict]:
    """``n`` distinct problems of ``split`` ("train" or "test"), reproducible from ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"demo split must be one of {SPLITS}, got {split!r}")
    r = random.Random(f"sketchtune-demo-{seed}")
    out, seen = [], set()
    for _ in range(200 * n + 1000):  # the problem space is large; this bound only guards against a bug
        rec = demo_record(r)
        q = rec["instruction"]
        if q in seen or _split_of(q) != split:
            continue
        seen.add(q)
        out.append(rec)
        if len(out) == n:
            return out
    raise RuntimeError(f"could not generate {n} distinct demo problems")
