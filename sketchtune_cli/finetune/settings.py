"""`data:` and `train:` sections (docs/method.md §3: the authors' recipe as defaults)."""
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


class TrainSettings(Section):
    base: Optional[str] = Field(None, description="sketch artifact to fine-tune (default: output_dir/compress)")
    lr: float = Field(3e-5, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after N optimizer steps (overrides epochs)")
    micro_batch_size: int = Field(4, ge=1)
    batch_size: int = Field(16, ge=1, description="effective batch (micro batch x accumulation x processes)")
    warmup_steps: int = Field(100, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    deterministic: bool = False
    save_every: Optional[int] = Field(None, ge=1, description="checkpoint every N steps (and always at the end)")
    save_every_minutes: Optional[float] = Field(30.0, gt=0, description="also checkpoint when this many minutes passed since the last checkpoint (null: off)")
    eval_every: Optional[int] = Field(None, ge=1)
    log_every: int = Field(1, ge=1)
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="older key for logging.trackers, merged into it when the config loads")


# The config sections the stage reads, and the keys among them that do not change its results (its
# ``interface.STAGE`` uses these, and so does a resume fingerprint where the stage resumes).
SECTIONS = ("model", "data", "train")
# train keys that change only where the base is read from, or logging/bookkeeping: a resumed run may change
# them and `run` ignores them (the base itself is pinned by its content hash).
RESULT_FREE = {"train": ("base", "save_every", "save_every_minutes", "eval_every", "log_every", "trackers")}
