"""The functions lm-eval calls for the bundled paper-protocol tasks (``!function`` in ``tasks/*.yaml``).

They are thin: prompts come from ``sketchtune_cli.prompts`` (the very template fine-tuning trains on) and
scoring from ``answers``. Each scorer returns ``{"acc": 0.0 | 1.0}``; lm-eval averages it.
"""
from __future__ import annotations

from ..prompts import render_alpaca
from . import answers

# Log-likelihood variants score each label word right after the words a fine-tuned model writes before it
# ("the correct answer is answer3" in Commonsense170K), so the comparison is between the label words only.
LL_ANSWER_PREFIX = "the correct answer is"


def _response(results) -> str:
    return results[0] if results else ""


def doc_to_text(doc: dict) -> str:
    """The alpaca prompt of a record, ending right after ``### Response:\\n``."""
    return render_alpaca(doc.get("instruction", ""), doc.get("input") or "")


def doc_to_text_ll(doc: dict) -> str:
    return doc_to_text(doc) + LL_ANSWER_PREFIX


def math_results(doc: dict, results) -> dict:
    return {"acc": float(answers.math_correct(_response(results), doc["answer"]))}


def aqua_results(doc: dict, results) -> dict:
    return {"acc": float(answers.letter_correct(_response(results), doc["answer"]))}


def choice_results(doc: dict, results) -> dict:
    return {"acc": float(answers.label_correct(_response(results), doc["answer"], label_choices(doc)))}


def label_choices(doc: dict) -> list[str]:
    """Options of a log-likelihood variant: the record's label words."""
    return answers.label_words(doc.get("instruction", ""))


def gold_index(doc: dict) -> int:
    labels = label_choices(doc)
    gold = str(doc["answer"]).strip().lower()
    if gold not in labels:
        raise ValueError(f"answer {doc['answer']!r} is not one of the record's label words {labels}")
    return labels.index(gold)
