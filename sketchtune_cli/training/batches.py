"""What a training loop eats: token sequences with per-token labels, split into train and validation, and the
right-padded batches built from them. Shared by the stages that train LUTs (finetune; the loop is
:mod:`.trainer`), independent of where the sequences came from."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE = -100  # label of a token that carries no loss (prompt, padding)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        """Tokens that carry loss (labels are shifted by one inside the loss, so the first never counts)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


@dataclass
class Datasets:
    train: list[Example]
    val: list[Example] | None
    stats: dict = field(default_factory=dict)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding gets attention 0 and label -100 (causal attention keeps real tokens'
    logits independent of the padding after them)."""
    def padded(rows: list[list[int]], value: int) -> torch.Tensor:
        return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)

    return {"input_ids": padded([e.input_ids for e in examples], pad_id),
            "attention_mask": padded([[1] * len(e.input_ids) for e in examples], 0),
            "labels": padded([e.labels for e in examples], IGNORE)}
