"""The `train:` section: what the LUT training loop (:mod:`.trainer`) reads. Finetune takes it from the
config; compress's distillation fills one from its `compress.distill_*` keys (docs/method.md §3: the authors'
recipe as defaults)."""
from typing import Literal, Optional

from pydantic import Field

from ..settings_base import Section


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
