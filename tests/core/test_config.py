"""Config: YAML + dotted overrides, type checking, one-line errors with 'did you mean'."""
import pytest

from sketchtune_cli.config import RunConfig, load_config
from sketchtune_cli.errors import UserError


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("compress:\n  groups_per_row: 2\ntrain:\n  lr: 1.0e-4\n")
    cfg = load_config(str(f), ["train.lr=3e-5", "compress.act_order=false", "eval.tasks=[gsm8k, boolq]"])
    assert cfg.compress.groups_per_row == 2 and cfg.train.lr == 3e-5
    assert cfg.compress.act_order is False and cfg.eval.tasks == ["gsm8k", "boolq"]
    assert isinstance(cfg, RunConfig) and cfg.model.name == "smollm2-135m"


def test_explicit_values_beat_file_and_overrides_beat_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("compress:\n  bits: 3\n")
    cfg = load_config(str(f), ["compress.groups_per_row=8"], {"compress.bits": 2, "compress.groups_per_row": 1})
    assert cfg.compress.bits == 2 and cfg.compress.groups_per_row == 8


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1", "unknown config key train.lrr; did you mean train.lr?"),
        ("trian.lr=1", "unknown config key trian; did you mean train?"),
        ("train.lr=fast", "config key train.lr: Input should be a valid number"),
        ("compress.bits=5", "config key compress.bits"),
        ("train.lr", "must look like section.key=value"),
    ],
)
def test_bad_overrides_are_one_line(override, message):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(str(f))


def test_missing_config_names_bundled():
    with pytest.raises(UserError, match="not found"):
        load_config("definitely-not-a-config")
