"""Answer extraction on tricky outputs (the paper's rules, docs/method.md §4)."""
import pytest

from sketchtune_cli.evaluate import answers


@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.", 1234.0),                    # thousands separators
    ("It costs $1,000,000 in total", 1000000.0),
    ("5 - 8 = -3", -3.0),                                 # negative, last number wins
    ("Half of 5 is 2.5", 2.5),                            # decimals
    ("First 3 apples, then 4, so 7 apples.", 7.0),        # several numbers: the last
    ("The answer is 12.", 12.0),                          # sentence period is not a decimal part
    ("no idea", None),                                    # no number
    ("", None),
])
def test_extract_number(text, expected):
    assert answers.extract_number(text) == expected


@pytest.mark.parametrize("output, gold, ok", [
    ("so the total is 1,200 dollars", "1200.0", True),
    ("it ends at -3", -3, True),
    ("about 2.5004", "2.5", True),                        # within 1e-3
    ("about 2.502", "2.5", False),                        # outside 1e-3
    ("10 apples and 3 pears", "10", False),               # last number is 3
    ("I cannot tell", "7", False),
    ("576", "576.0", True),
])
def test_math_correct(output, gold, ok):
    assert answers.math_correct(output, gold) is ok


@pytest.mark.parametrize("text, expected", [
    ("The answer is C.", "C"),        # 'T' is not A-E
    ("  B) 12 apples, not A", "B"),  # first letter wins
    ("answer: e", None),              # lower case does not count (authors' rule)
    ("", None),
])
def test_extract_letter(text, expected):
    assert answers.extract_letter(text) == expected


def test_label_words_from_answer_format_line():
    inst = "Please choose ...\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2/answer3/answer4"
    assert answers.label_words(inst) == ["answer1", "answer2", "answer3", "answer4"]
    assert answers.label_words("question: is it?\n\nAnswer format: true/false") == ["true", "false"]
    assert answers.label_words("no format line") == list(answers.ALL_LABEL_WORDS)


@pytest.mark.parametrize("text, expected", [
    ("the correct answer is TRUE", "true"),               # case-insensitive
    ("False. It is not.", "false"),
    ("true or false? false", "true"),                      # first match wins
    ("Solution2 is better than solution1", "solution2"),
    ("untrue", None),                                      # whole words only
    ("not sure", None),
])
def test_first_label(text, expected):
    labels = ["true", "false", "solution1", "solution2"]
    assert answers.first_label(text, labels) == expected


def test_label_correct_is_case_insensitive_on_both_sides():
    assert answers.label_correct("The correct answer is Answer3", "answer3", ["answer1", "answer2", "answer3"])
    assert not answers.label_correct("answer2", "answer3", ["answer1", "answer2", "answer3"])
