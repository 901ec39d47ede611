"""`export:` section."""
from typing import Literal

from ..settings_base import Section


class ExportSettings(Section):
    format: Literal["hf-dense", "hf-sketch", "lut-only"] = "hf-dense"
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
