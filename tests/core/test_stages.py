"""The per-stage interface: one list of result-free keys per stage, used by `run`'s skip test and by the
stage's own resume fingerprint."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sketchtune_cli import stages
from sketchtune_cli.config import RunConfig


def test_every_stage_exposes_the_interface():
    for name in stages.STAGE_NAMES:
        stage = stages.get(name)
        assert stage.name == name and set(stage.result_free) <= set(stage.sections)
        for section, keys in stage.result_free.items():
            assert set(keys) <= set(RunConfig.model_fields[section].annotation.model_fields)


@pytest.mark.parametrize("name", stages.STAGE_NAMES)
def test_result_free_keys_do_not_change_the_fingerprint(name):
    stage = stages.get(name)
    config = RunConfig().model_dump(mode="json")
    base = stage.fingerprint(config)
    for section, keys in stage.result_free.items():
        for key in keys:
            changed = RunConfig().model_dump(mode="json")
            changed[section][key] = "something else"
            assert stage.fingerprint(changed) == base, (section, key)
    for section in stage.sections:
        for key in set(config[section]) - set(stage.result_free.get(section, ())):
            changed = RunConfig().model_dump(mode="json")
            changed[section][key] = "something else"
            assert stage.fingerprint(changed) != base, (section, key)


def test_compress_resume_and_run_share_one_fingerprint():
    from sketchtune_cli.compress.stage import resume_hash
    from sketchtune_cli.orchestrator import stage_fingerprint

    cfg = RunConfig()
    recorded = cfg.section_dict("model", "compress")  # what a sketch manifest holds
    moved = cfg.model_copy(deep=True)
    moved.compress.device = "cpu"
    moved.compress.offload_activations = True
    assert resume_hash(recorded) == resume_hash(moved.section_dict("model", "compress"))
    assert stage_fingerprint("compress", recorded) == stage_fingerprint("compress", moved.model_dump(mode="json"))


def test_finetune_resume_fingerprint_ignores_the_base_path_not_its_hash():
    from types import SimpleNamespace

    from sketchtune_cli.finetune.stage import fingerprint

    sections = RunConfig().section_dict("model", "data", "train")
    here, there = dict(sections, train={**sections["train"], "base": "/a"}), dict(sections, train={**sections["train"], "base": "/b"})
    base = SimpleNamespace(content_hash="1" * 64)
    assert fingerprint(here, base) == fingerprint(there, base)
    assert fingerprint(here, base) != fingerprint(here, SimpleNamespace(content_hash="2" * 64))


@pytest.mark.parametrize("name", stages.STAGE_NAMES)
def test_a_stage_sees_its_own_sections_and_nothing_else(name):
    """What `run`, the preflight and the commands hand a stage: its sections and the run-wide ones (the same
    objects); another stage's section is an error that says where to declare it."""
    stage, cfg, seen = stages.get(name), RunConfig(), []

    def record(view, job):
        seen.append(view)
        return []

    dataclasses.replace(stage, check_fn=record).check(cfg, stages.Job(Path("out")))
    view = seen[0]
    for section in RunConfig.model_fields:
        if section in stage.sections or section in stages.RUN_WIDE:
            assert getattr(view, section) is getattr(cfg, section), section
        else:
            with pytest.raises(AttributeError, match=f"no '{section}'.*SECTIONS"):
                getattr(view, section)
    with pytest.raises(AttributeError, match="read-only"):
        view.output_dir = "elsewhere"
    copy = view.model_copy(deep=True)
    copy.logging.run_name = "changed"
    assert cfg.logging.run_name is None and copy.section_dict("logging")["logging"]["run_name"] == "changed"


def test_train_trackers_fold_into_logging_trackers():
    """The older finetune-only key still works, and every stage reads trackers from ``logging`` alone."""
    cfg = RunConfig.model_validate({"train": {"trackers": ["wandb"]}, "logging": {"trackers": ["tensorboard"]}})
    assert cfg.logging.trackers == ["tensorboard", "wandb"]
    assert RunConfig().logging.trackers == []
