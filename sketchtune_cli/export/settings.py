"""`export:` section."""
from typing import Literal

from pydantic import Field

from ..settings_base import Section


class ExportSettings(Section):
    format: Literal["hf-dense", "hf-sketch", "lut-only"] = Field(
        "hf-dense", description="hf-dense: plain HF checkpoint; hf-sketch: packed sketch (transformers plugin); "
        "lut-only: the LUTs as an adapter over the base sketch")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype of the exported floating tensors")
    max_shard_size: str = Field("5GB", description="hf-dense and hf-sketch: largest safetensors shard (transformers' syntax)")


# The config sections the stage reads, and the keys among them that do not change its results (its
# ``interface.STAGE`` uses these, and so does a resume fingerprint where the stage resumes).
SECTIONS = ("export",)
RESULT_FREE: dict[str, tuple[str, ...]] = {}
