"""Answer extraction for the paper's protocol (docs/method.md §4), as plain functions.

These mirror the LLM-Adapters / SketchTune evaluation scripts, so scores are comparable with the paper:
math takes the LAST number of the output after removing thousands separators and counts it correct within
1e-3; AQuA takes the FIRST capital letter A-E; commonsense takes the FIRST label word (``true``,
``solution2``, ``answer3``...), here case-insensitively.
"""
from __future__ import annotations

import math
import re

# Authors' pattern: an optional minus, digits, an optional point and more digits ("3." -> 3.0).
_NUMBER = re.compile(r"-?\d+\.?\d*")
_LETTER = re.compile(r"[A-E]")
_ANSWER_FORMAT = re.compile(r"Answer format:\s*([A-Za-z0-9_]+(?:\s*/\s*[A-Za-z0-9_]+)+)")
MATH_TOLERANCE = 1e-3

# Every label word the LLM-Adapters commonsense sets use; the fallback when a record does not state its
# own "Answer format:" line.
ALL_LABEL_WORDS = (
    "true", "false", "solution1", "solution2", "answer1", "answer2", "answer3", "answer4", "answer5",
    "ending1", "ending2", "ending3", "ending4", "option1", "option2",
)


def extract_number(text: str) -> float | None:
    """The last number in ``text`` after stripping commas (``"1,234.5"`` -> 1234.5); None if there is none."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None  # the pattern only matches what float() reads


def to_number(answer) -> float | None:
    """The gold answer of a math record as a float (the files store ``"576.0"``, ``18``, ``"1,200"``)."""
    if isinstance(answer, (int, float)):
        return float(answer)
    return extract_number(str(answer))


def math_correct(output: str, answer) -> bool:
    """Paper rule: the last number of the output is within 1e-3 of the gold answer."""
    pred, gold = extract_number(output), to_number(answer)
    if pred is None or gold is None or not math.isfinite(pred):
        return False
    return abs(pred - gold) <= MATH_TOLERANCE


def extract_letter(text: str) -> str | None:
    """AQuA: the first capital letter A-E in the (stripped) output, as the authors' script does."""
    m = _LETTER.search(text.strip())
    return m.group(0) if m else None


def letter_correct(output: str, answer) -> bool:
    pred = extract_letter(output)
    return pred is not None and pred == str(answer).strip().upper()[:1]


def label_words(instruction: str) -> list[str]:
    """The label words a commonsense record asks for, read from its "Answer format: a/b/c" line (every
    LLM-Adapters commonsense file has one); all known label words if the line is missing."""
    m = _ANSWER_FORMAT.search(instruction or "")
    if not m:
        return list(ALL_LABEL_WORDS)
    return [w.strip().lower() for w in m.group(1).split("/")]


def first_label(text: str, labels: list[str] | tuple[str, ...]) -> str | None:
    """The label word that occurs first in ``text`` (case-insensitive, whole word), lower-cased."""
    if not labels:
        return None
    # Longest first so that e.g. "answer10" would never be read as "answer1".
    alternation = "|".join(re.escape(w) for w in sorted(labels, key=len, reverse=True))
    m = re.search(rf"(?<![A-Za-z0-9])({alternation})(?![A-Za-z0-9])", text, flags=re.IGNORECASE)
    return m.group(1).lower() if m else None


def label_correct(output: str, answer, labels: list[str] | tuple[str, ...]) -> bool:
    pred = first_label(output, labels)
    return pred is not None and pred == str(answer).strip().lower()
