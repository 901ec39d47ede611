"""`sketchtune config`: show a resolved config, list bundled configs, print the reference of every key
(generated from the pydantic schema, so it cannot drift from the code)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from .config import RunConfig, bundled_config_dir, bundled_configs, dump_yaml, load_config
from .errors import UserError
from .settings_base import Section

config_app = typer.Typer(help="Show, list and document configs.", no_args_is_help=True)


def _type_name(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def reference_markdown() -> str:
    """Markdown tables, one per section, from the schema: key, type, default, description."""
    lines = ["# Config reference", "", "Generated from the schema by `sketchtune config reference`; every key can be",
             "set in the YAML file or as a `section.key=value` override.", ""]
    top = []
    for name, field in RunConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Section):
            lines += [f"## `{name}`", "", "| key | type | default | description |", "|---|---|---|---|"]
            for key, sub in ann.model_fields.items():
                default = sub.get_default(call_default_factory=True)
                desc = (sub.description or "").replace("|", "\\|")
                lines.append(f"| `{name}.{key}` | `{_type_name(sub.annotation)}` | `{default!r}` | {desc} |")
            lines.append("")
        else:
            top.append(f"| `{name}` | `{_type_name(ann)}` | `{field.get_default()!r}` | {field.description or ''} |")
    lines += ["## top level", "", "| key | type | default | description |", "|---|---|---|---|", *top, ""]
    return "\n".join(lines)


@config_app.command("show", epilog="Example:\n\n  sketchtune config show --config math train.lr=1e-5")
def show(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file or bundled config name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides"),
):
    """Print the fully resolved config (defaults + file + overrides) as YAML."""
    typer.echo(dump_yaml(load_config(config, overrides)), nl=False)


@config_app.command("list")
def list_configs():
    """List the bundled configs (usable as `--config NAME`)."""
    for name in bundled_configs():
        typer.echo(name)


@config_app.command("copy", epilog="Example:\n\n  sketchtune config copy math my-math.yaml  # edit it, then: sketchtune run --config my-math.yaml")
def copy(
    name: str = typer.Argument(..., help="bundled config name (see `sketchtune config list`)"),
    file: Path = typer.Argument(..., help="where to write it (a directory: FILE/NAME.yaml)"),
    force: bool = typer.Option(False, "--force", "-f", help="replace an existing FILE"),
):
    """Copy a bundled recipe, comments included, to FILE to edit; prints FILE."""
    if name not in bundled_configs():
        raise UserError(f"no bundled config {name!r}; bundled configs: {', '.join(bundled_configs())}")
    target = file / f"{name}.yaml" if file.is_dir() else file
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to replace it or choose another FILE")
    if not target.parent.is_dir():
        raise UserError(f"directory {target.parent} does not exist; create it or choose another FILE")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text((bundled_config_dir() / f"{name}.yaml").read_text())  # the file itself: comments kept
    os.replace(tmp, target)
    typer.echo(str(target))


@config_app.command("reference")
def reference():
    """Print the Markdown reference of every config key."""
    typer.echo(reference_markdown(), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
