"""The bundled task YAMLs run through lm-eval against a scripted LM whose outputs are known: the accuracy
lm-eval reports must equal the hand-computed one (conftest.EXPECTED), the independent reference."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from eval_fakes import EXPECTED, LL_FAVOURITE, scripted_replies
from lm_eval.api.model import LM

from sketchtune_cli.errors import UserError
from sketchtune_cli.evaluate import registry, report, runner, taskgen
from sketchtune_cli.evaluate.hooks import LL_ANSWER_PREFIX
from sketchtune_cli.prompts import render_alpaca


def _tag(context: str) -> str:
    start = context.index("### Instruction:\n[") + len("### Instruction:\n")
    return context[start: context.index("]", start) + 1]


class ScriptedLM(LM):
    """Replies from a table keyed by the record's tag; records every request it saw."""

    def __init__(self):
        super().__init__()
        self.replies = scripted_replies()
        self.seen_gen, self.seen_ll = [], []

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.seen_gen += [r.args for r in requests]
        return [self.replies[_tag(r.args[0])] for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.seen_ll += [r.args for r in requests]
        out = []
        for context, continuation in (r.args for r in requests):
            favourite = LL_FAVOURITE[_tag(context).strip("[]")]
            out.append((0.0 if continuation.strip() == favourite else -5.0, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def run_scripted(names: list[str], data_dir: Path, tmp_path: Path, max_new_tokens: int = 256):
    sel = registry.select(names, have_data_dir=True)
    registry.check_data(sel.paper, data_dir)
    groups = [n for n in sel.requested if n in registry.GROUPS]
    include = taskgen.write_task_dir(tmp_path / "tasks", sel.paper, groups, data_dir, max_new_tokens)
    lm = ScriptedLM()
    results = runner.run_lm_eval(lm, sel.requested, runner.make_task_manager(include, []), runner.RunOptions())
    return lm, results, report.scores_of("scripted", results)


def test_accuracy_equals_hand_computed(fake_data_dir, tmp_path):
    names = ["math", "boolq", "piqa", "boolq_ll", "piqa_ll"]
    lm, results, scores = run_scripted(names, fake_data_dir, tmp_path, max_new_tokens=17)
    for task, expected in EXPECTED.items():
        assert scores.scores[task] == pytest.approx(expected, abs=1e-3), task
    math_tasks = [t for t in EXPECTED if registry.PAPER_TASKS[t].group == "st_math"]
    # the paper averages tasks unweighted, not by test-set size
    assert scores.scores["st_math"] == pytest.approx(sum(EXPECTED[t] for t in math_tasks) / 7, abs=1e-3)
    leaves = [v for k, v in EXPECTED.items()]
    assert scores.average == pytest.approx(sum(leaves) / len(leaves), abs=1e-3)
    # every generation request used the training prompt, greedy, our token budget and stop string
    for context, gen_kwargs in lm.seen_gen:
        assert context.startswith(render_alpaca("x")[:60]) and context.endswith("### Response:\n")
        assert gen_kwargs["max_gen_toks"] == 17 and gen_kwargs["do_sample"] is False
        assert "### Instruction:" in gen_kwargs["until"]
    # log-likelihood: each label word scored right after "... ### Response:\nthe correct answer is"
    contexts = {c for c, _ in lm.seen_ll}
    assert all(c.endswith("### Response:\n" + LL_ANSWER_PREFIX) for c in contexts)
    assert sorted({cont for _, cont in lm.seen_ll}) == [" false", " solution1", " solution2", " true"]
    assert len(lm.seen_ll) == 4 * 2 + 3 * 2


def test_limit_takes_first_records(fake_data_dir, tmp_path):
    sel = registry.select(["gsm8k"], have_data_dir=True)
    include = taskgen.write_task_dir(tmp_path / "tasks", sel.paper, [], fake_data_dir, 8)
    results = runner.run_lm_eval(ScriptedLM(), sel.requested, runner.make_task_manager(include, []),
                                 runner.RunOptions(limit=2))
    assert report.scores_of("x", results).scores["st_gsm8k"] == 100.0  # g1, g2 are right


def test_name_resolution():
    sel = registry.select(["gsm8k", "siqa_ll", "svamp", "lm:hellaswag", "arc_easy", "commonsense"], have_data_dir=True)
    # arc_easy is inside the commonsense group: lm-eval refuses a task twice, so it runs once, in the group
    assert sel.requested == ["st_gsm8k", "st_social_i_qa_ll", "st_svamp", "hellaswag", "st_commonsense"]
    assert sel.harness == ["hellaswag"]
    assert sel.paper == ["st_gsm8k", "st_social_i_qa_ll", "st_svamp", "st_arc_easy"] + [
        t for t in registry.GROUPS["st_commonsense"] if t != "st_arc_easy"]
    # no data dir: bare names lm-eval knows are lm-eval's; ours stay ours
    sel = registry.select(["gsm8k", "svamp", "social_i_qa"], have_data_dir=False)
    assert sel.harness == ["gsm8k", "social_iqa"] and sel.paper == ["st_svamp"]
    assert registry.select(["demo_arith"], have_data_dir=False).paper == ["st_demo_arith"]
    assert "st_demo_arith" not in registry.GROUPS["st_math"]  # the paper's average stays the paper's


def test_missing_file_and_missing_dir_are_one_line_errors(fake_data_dir, tmp_path):
    with pytest.raises(UserError, match=r"st_hellaswag: data file .*hellaswag/test.json not found"):
        registry.check_data(["st_hellaswag"], fake_data_dir)
    with pytest.raises(UserError, match="--data-dir"):
        registry.check_data(["st_gsm8k"], None)


def test_unknown_task_names_the_task(tmp_path):
    tm = runner.make_task_manager(tmp_path, [])
    with pytest.raises(UserError, match="unknown task 'nope'"):
        runner.check_harness_tasks(tm, ["nope"])


def test_markdown_table_side_by_side():
    a = report.ModelScores("base", {"st_gsm8k": 10.0, "st_boolq": 50.0})
    b = report.ModelScores("runs/sketch", {"st_gsm8k": 20.0, "st_boolq": 70.0})
    md = report.markdown_table([a, b])
    assert md.splitlines()[0] == "| task | base | runs/sketch |"
    assert "| st_gsm8k | 10.00 | 20.00 |" in md and "| average | 30.00 | 45.00 |" in md
    assert not math.isnan(a.average)
