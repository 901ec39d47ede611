"""`eval:` section."""
from typing import Optional

from pydantic import Field

from ..settings_base import Section


class EvalSettings(Section):
    tasks: list[str] = Field(default_factory=lambda: ["gsm8k"], description="lm-eval task names or the bundled paper-protocol tasks/groups")
    data_dir: Optional[str] = Field(None, description="folder with LLM-Adapters test files (<Dataset>/test.json); default $SKETCHTUNE_DATA, else the paper tasks' files are fetched once into the cache and checked against pinned hashes")
    limit: Optional[int] = Field(None, ge=1, description="evaluate the first N examples per task")
    num_fewshot: Optional[int] = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    chat_template: bool = False
    log_samples: bool = False


# The config sections the stage reads, and the keys among them that do not change its results (its
# ``interface.STAGE`` uses these, and so does a resume fingerprint where the stage resumes).
SECTIONS = ("model", "eval")
RESULT_FREE = {"eval": ("batch_size",)}
