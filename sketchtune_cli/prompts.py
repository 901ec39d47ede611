"""The one prompt template (docs/method.md §3): alpaca style, as the SketchTune authors and LLM-Adapters use it.

Compress (calibration on instruction data), finetune and eval all import ``render_alpaca`` from here, so
training, calibration and evaluation prompts can never drift apart.
"""
from __future__ import annotations

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
# LLM-Adapters' variant for records with a non-empty `input` field.
PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
RESPONSE_MARKER = "### Response:\n"


def render_alpaca(instruction: str, input: str | None = None, output: str | None = None) -> str:
    """The training/eval prompt for one record. Without ``output`` it ends right after
    ``### Response:\\n`` (the generation prompt); with it, the output follows. The EOS token is not
    added here: the tokenizer's EOS id is appended by the caller that needs it."""
    instruction = instruction or ""
    if input and input.strip():
        text = f"{PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n{RESPONSE_MARKER}"
    else:
        text = f"{PREAMBLE}\n\n### Instruction:\n{instruction}\n\n{RESPONSE_MARKER}"
    return text if output is None else text + output
