"""The `data:` section, and which sections finetune reads. Its `train:` section is ``training/settings.py``'s
``TrainSettings``, beside the loop that reads it (compress's distillation trains with it too)."""
from typing import Literal, Optional

from pydantic import Field

from ..settings_base import Section


class DataSettings(Section):
    path: Optional[str] = Field(None, description="training data: a .json/.jsonl file or its http(s) URL (fetched once into $SKETCHTUNE_CACHE), a HF dataset 'name' or 'name:subset', or 'demo'. Records: instruction/input/output (alpaca, LLM-Adapters) or messages (chat: list of {role, content}; loss on assistant turns)")
    split: str = Field("train", description="split of a HF dataset named by data.path")
    columns: Optional[dict[Literal["instruction", "input", "output", "messages"], str]] = Field(
        None, description="field names of another schema, e.g. {instruction: question, output: answer}")
    encoding: str = Field("utf-8", description="text encoding of local data files (bytes invalid in it are refused, never replaced)")
    template: Literal["alpaca", "chat"] = "alpaca"
    max_seq_len: int = Field(2048, ge=8)
    val_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of the data held out for eval loss")
    val_path: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1, description="use only the first N records (demo: how many to generate)")
    val_limit: Optional[int] = Field(None, ge=1, description="use only the first N validation records")


# The config sections the stage reads, and the keys among them that do not change its results (its
# ``interface.STAGE`` uses these, and so does a resume fingerprint where the stage resumes).
SECTIONS = ("model", "data", "train")
# train keys that change only where the base is read from, or logging/bookkeeping: a resumed run may change
# them and `run` ignores them (the base itself is pinned by its content hash).
RESULT_FREE = {"train": ("base", "save_every", "save_every_minutes", "eval_every", "log_every", "trackers")}
