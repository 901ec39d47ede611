"""The config reference in docs/ is generated from the schema and must be current."""
from pathlib import Path

from sketchtune_cli.config_cmd import reference_markdown

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    text = (REPO / "docs" / "config-reference.md").read_text()
    assert text == reference_markdown(), "regenerate it: sketchtune config reference > docs/config-reference.md"


def test_bundled_configs_validate():
    from sketchtune_cli.config import bundled_configs, load_config

    assert {"demo", "math", "commonsense"} <= set(bundled_configs())
    for name in bundled_configs():
        load_config(name)
