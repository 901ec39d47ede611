"""Fake LLM-Adapters-style data for eval tests: each record's scripted generation and the hand-computed
accuracy it must score (the independent reference for the task YAMLs)."""
from __future__ import annotations

import json
from pathlib import Path


def _rec(instruction: str, answer) -> dict:
    return {"instruction": instruction, "input": "", "output": "", "answer": answer}


def _choice(key: str, question: str, fmt: str, answer: str) -> dict:
    return _rec(f"[{key}] {question}\n\nAnswer format: {fmt}", answer)


# key -> (record, scripted generation). Hand-computed accuracies are in EXPECTED.
MATH = {
    "gsm8k": [
        (_rec("[g1] How much?", "1200.0"), "So the total is 1,200 dollars."),   # right (commas)
        (_rec("[g2] Where does it end?", "-3"), "It drops 5 and rises 2: -3"),  # right (negative)
        (_rec("[g3] How long?", "2.5"), "about 2.5004 hours"),                 # right (within 1e-3)
        (_rec("[g4] How many?", "7"), "I do not know."),                       # wrong (no number)
        (_rec("[g5] How many apples?", "10"), "10 apples and 3 pears"),        # wrong (last number)
    ],
    "SVAMP": [(_rec("[s1] Sum?", "4.0"), "2 + 2 = 4")],
    "AddSub": [(_rec("[a1] Sum?", "9"), "The answer is 9.")],
    "MultiArith": [(_rec("[m1] Product?", "12"), "3 * 4 = 12")],
    "SingleEq": [(_rec("[e1] x?", "5"), "x = 6")],                              # wrong
    "mawps": [(_rec("[w1] Left?", "0.5"), "0.5")],
    "AQuA": [
        (_rec("[q1] Pick", "C"), "The answer is C."),                              # right
        (_rec("[q2] Pick", "A"), "Between B and A, B."),                           # wrong (first letter B)
        (_rec("[q3] Pick", "E"), "answer: e"),                                     # wrong (lower case)
    ],
}
COMMONSENSE = {
    "boolq": [
        (_choice("b1", "is it?", "true/false", "true"), "the correct answer is TRUE"),   # right
        (_choice("b2", "is it?", "true/false", "false"), "False."),                      # right
        (_choice("b3", "is it?", "true/false", "false"), "true or false? false"),        # wrong
        (_choice("b4", "is it?", "true/false", "true"), "not sure"),                     # wrong
    ],
    "piqa": [
        (_choice("p1", "how?", "solution1/solution2", "solution1"), "solution1"),
        (_choice("p2", "how?", "solution1/solution2", "solution2"), "Solution2"),
        (_choice("p3", "how?", "solution1/solution2", "solution2"), "solution1"),
    ],
}
# Log-likelihood variants: the label word the scripted LM scores highest for each record.
LL_FAVOURITE = {"b1": "true", "b2": "true", "b3": "false", "b4": "true",   # boolq_ll: 3/4
                "p1": "solution1", "p2": "solution1", "p3": "solution2"}  # piqa_ll: 2/3
EXPECTED = {
    "st_gsm8k": 60.0, "st_svamp": 100.0, "st_addsub": 100.0, "st_multiarith": 100.0, "st_singleeq": 0.0,
    "st_mawps": 100.0, "st_aqua": 100.0 / 3,
    "st_boolq": 50.0, "st_piqa": 200.0 / 3, "st_boolq_ll": 75.0, "st_piqa_ll": 200.0 / 3,
}


def write_data_dir(root: Path) -> Path:
    for folder, items in {**MATH, **COMMONSENSE}.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "test.json").write_text(json.dumps([rec for rec, _ in items], indent=1))
    return root


def scripted_replies() -> dict[str, str]:
    """The tag in each record's instruction (``[g1]``) -> the scripted generation."""
    out = {}
    for items in {**MATH, **COMMONSENSE}.values():
        for rec, reply in items:
            out[rec["instruction"].split("]")[0] + "]"] = reply
    return out
