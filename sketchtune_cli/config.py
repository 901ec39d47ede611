"""The run configuration: one pydantic model per YAML section, loaded from a file (or a bundled config by
name) plus dotted ``section.key=value`` overrides. Every error is one line that names the path."""
from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from .compress.settings import CompressSettings
from .errors import UserError
from .evaluate.settings import EvalSettings
from .export.settings import ExportSettings
from .finetune.settings import DataSettings
from .settings_base import Section
from .stages import StageConfig
from .training.settings import TrainSettings


class ModelSettings(Section):
    name: str = Field("smollm2-135m", description="alias, Hugging Face Hub id, local directory or .gguf file")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    plots: bool = Field(True, description="write PNG plots (per-layer error, loss curve)")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="experiment trackers for every stage: compress per-layer errors, finetune metrics, eval scores")
    project: str = Field("sketchtune", description="tracker project (TensorBoard: a directory under logging.dir; W&B: the project)")
    run_name: Optional[str] = Field(None, description="tracker run name (default: output_dir's name under `sketchtune run`, else the artifact's name)")
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    wandb_entity: Optional[str] = Field(None, description="W&B entity (team or user); default: your W&B default")
    dir: Optional[str] = Field(None, description="tracker files (default: logs/ beside the artifact, i.e. output_dir/logs under `sketchtune run`)")


class RunConfig(Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    compress: CompressSettings = Field(default_factory=CompressSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    output_dir: str = Field("runs/sketchtune", description="`sketchtune run` writes output_dir/<stage>/")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _one_tracker_list(self) -> "RunConfig":
        """``train.trackers`` is the older spelling of ``logging.trackers``: folded in here, so every stage
        reads the trackers from ``logging`` alone."""
        merged = sorted(set(self.logging.trackers) | set(self.train.trackers))
        if merged != self.logging.trackers:
            self.logging.trackers = merged
        return self

    def view(self, sections: tuple[str, ...]) -> StageConfig:
        """What a stage that reads ``sections`` sees (stages.StageConfig)."""
        return StageConfig(dict(self)).view(sections)

    def section_dict(self, *names: str) -> dict:
        return StageConfig({n: getattr(self, n) for n in names}).section_dict(*names)


def bundled_config_dir() -> Path:
    import sketchtune_configs

    return Path(sketchtune_configs.__file__).parent


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in bundled_config_dir().glob("*.yaml"))


def find_config_file(name: str) -> Path:
    """A path, or the name of a bundled config (``math`` -> configs/math.yaml)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise UserError(f"config file {name} is a directory; give a YAML file")
    bundled = bundled_config_dir() / f"{Path(name).stem}.yaml"
    if p.suffix in ("", ".yaml", ".yml") and "/" not in name and bundled.is_file():
        return bundled
    hint = f"; bundled configs: {', '.join(bundled_configs())}" if bundled_configs() else ""
    raise UserError(f"config file {name} not found{hint}")


# A config holds a few hundred values; YAML aliases (``*a``) can make a few lines expand to billions
# (the "billion laughs"), which would hang anything that walks the result (validation, messages, hashing).
MAX_CONFIG_VALUES = 100_000


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise UserError(f"{path} nests deeper than YAML can be read; flatten it") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save "
                        f"it as UTF-8") from None
    if _expanded_size(data) > MAX_CONFIG_VALUES:
        raise UserError(f"{path} expands to more than {MAX_CONFIG_VALUES:,} values through YAML aliases "
                        f"(&anchor / *alias); write the values out instead")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a YAML mapping of sections (model:, compress:, train: ...)")
    return data


def _expanded_size(data: Any) -> int:
    """How many values ``data`` holds once aliases are expanded, counted without expanding them: each
    shared node's size is computed once (by identity), so a bomb is measured in microseconds."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a recursive alias (&a [*a]) counts as one while it is being measured
            children = list(node.values()) + list(node.keys()) if isinstance(node, dict) else node
            sizes[key] = min(1 + sum(size(c) for c in children), MAX_CONFIG_VALUES + 1)
        return sizes[key]

    return size(data)


def short_repr(value: Any) -> str:
    """A bounded repr for messages: user values can be huge (or alias bombs)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 80, 80, 5, 5, 2
    return r.repr(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-5)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError):  # not YAML (or absurdly nested): the value is the text itself
        value = raw
    return key.strip().split("."), value


def _fields_of(model_cls, path: list[str]):
    """Walk the schema to list the valid keys at ``path`` (for 'did you mean')."""
    cls = model_cls
    for part in path:
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, Section)):
            return []
        cls = ann
    return list(cls.model_fields)


def set_dotted(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise UserError(f"cannot set {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
        node = nxt
    node[keys[-1]] = value


def _explain(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(x) for x in first["loc"]]
    path = ".".join(loc)
    if first["type"] == "extra_forbidden":
        valid = _fields_of(RunConfig, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(loc[:-1] + close)}?" if close else f"; valid keys: {', '.join(valid)}"
        return f"unknown config key {path}{hint}"
    got = first.get("input")
    return f"config key {path}: {first['msg']} (got {short_repr(got)})"


def build_config(data: dict, source: str = "config") -> RunConfig:
    if _expanded_size(data) > MAX_CONFIG_VALUES:  # overrides are YAML too
        raise UserError(f"{source}: the settings expand to more than {MAX_CONFIG_VALUES:,} values through YAML "
                        f"aliases; write the values out instead")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{source}: {_explain(e)}") from None


def load_config(config: str | None = None, overrides: list[str] | None = None, values: dict | None = None) -> RunConfig:
    """Defaults <- YAML file (path or bundled name) <- ``values`` (explicit CLI flags, dotted keys) <-
    ``overrides`` (``a.b=c`` strings)."""
    data: dict = _read_yaml(find_config_file(config)) if config else {}
    for key, value in (values or {}).items():
        if value is not None:
            set_dotted(data, key.split("."), value)
    for text in overrides or []:
        keys, value = parse_override(text)
        set_dotted(data, keys, value)
    return build_config(data, source=config or "config")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
