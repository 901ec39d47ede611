"""The ``README.md`` model card of an export: what it is, how to load it, what it costs, how it scored and
every stage config that made it (from the artifact lineage), so a shared export explains itself."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..artifacts import Manifest

_LOAD_SNIPPETS = {
    "hf-dense": (
        "A plain transformers checkpoint (sketchtune not needed):\n\n```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(\"{out}\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"{out}\")\n```"
    ),
    "hf-sketch": (
        "The packed sketch; `import sketchtune_cli` registers the `sketchtune` quantization method:\n\n```python\n"
        "import sketchtune_cli  # noqa: F401\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(\"{out}\")  # LUTs trainable, codes frozen\n```"
    ),
    "lut-only": (
        "LUTs only; apply them to the base sketch they were exported from (checked by content hash):\n\n"
        "```bash\nsketchtune eval {out} --tasks ...      # loads the base sketch + these LUTs\n```\n\n"
        "```python\nfrom sketchtune_cli.export.adapters import AdapterBank\n"
        "bank = AdapterBank.from_adapter(\"{out}\")\nbank.activate(\"{out}\")\n```"
    ),
}


def render(fmt: str, out: Path, results: dict, chain: list[Manifest], evals: list[Manifest]) -> str:
    """The card text. ``chain``: the exported artifact's lineage, nearest first."""
    base_model = results.get("base_model", "unknown")
    parts = [
        "---\nlibrary_name: transformers\ntags: [sketchtune, sketch, lut]\n"
        + (f"base_model: {base_model}\n" if base_model != "unknown" else "") + "---",
        f"# {Path(out).name}: SketchTune export ({fmt})",
        f"Base model **{base_model}**, sketched with SketchTune (Zhang et al., ICML 2025): every decoder "
        "linear layer is a frozen code matrix plus per-(row, group) lookup tables; only the tables train.",
        "## Loading\n\n" + _LOAD_SNIPPETS[fmt].format(out=out),
        "## Sketch\n\n" + _table([("format", fmt), ("dtype", results.get("dtype")), *_size_rows(results)]),
    ]
    scores = _eval_rows(evals)
    if scores:
        parts.append("## Evaluation\n\n" + _table(scores))
    parts.append("## How it was made\n\n" + "\n\n".join(_stage_section(m) for m in reversed(chain)))
    return "\n\n".join(parts) + "\n"


def _size_rows(results: dict) -> list[tuple[str, object]]:
    sizes = results.get("sizes", {})
    return [
        ("bits", results.get("bits")),
        ("groups_per_row", results.get("groups_per_row")),
        ("sketched layers", sizes.get("sketched_layers")),
        ("trainable parameters (LUT values)", _count(sizes.get("trainable_params"))),
        ("dense-equivalent parameters", _count(sizes.get("dense_params"))),
        ("base sketch size", _bytes(sizes.get("base_sketch_bytes"))),
        ("this export's size", _bytes(sizes.get("export_bytes"))),
        ("base sketch content hash", results.get("base_sketch", {}).get("content_hash", "")[:16]),
    ]


def _stage_section(m: Manifest) -> str:
    head = f"### {m.stage} (`{m.path}`, {m.created}, content hash `{m.content_hash[:16]}`)"
    body = yaml.safe_dump(m.config, sort_keys=False).strip() if m.config else "(no recorded config)"
    return f"{head}\n\n```yaml\n{body}\n```"


def _eval_rows(evals: list[Manifest]) -> list[tuple[str, object]]:
    rows = []
    for m in evals:
        for key, value in _flatten(m.results):
            rows.append((f"{key} ({Path(m.path).name})", value))
    return rows


def _flatten(data, prefix: str = ""):
    """Numeric leaves of nested results as ``a.b.c`` keys (eval results' exact shape is the eval stage's)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield prefix, round(data, 4) if isinstance(data, float) else data


def _table(rows) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "")]
    return "\n".join(lines)


def _count(n) -> str | None:
    return None if n is None else f"{n:,} ({n / 1e6:.2f}M)"


def _bytes(n) -> str | None:
    return None if n is None else f"{n / 2**20:.1f} MiB ({n:,} bytes)"
