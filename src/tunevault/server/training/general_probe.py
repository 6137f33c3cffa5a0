"""The forgetting check: a fixed set of general prompts, scored before and after fine-tuning.

A narrow adapter can learn its task and lose the rest (answering every question with a triage
route). The check is the answer loss on 24 everyday questions that ship with tunevault
(general_prompts.jsonl: facts, arithmetic, language), in the model's chat template: cheap (one
forward pass), deterministic, and comparable between the base and the adapter. A rise means the
adapter moved the model away from general answers; the report shows it beside the task figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunevault.server.contract.formats import read_chat_jsonl
from tunevault.server.training.batching import eval_batches
from tunevault.server.training.evaluation import eval_loss
from tunevault.server.training.stopping import StopFlag
from tunevault.server.training.tokenization import tokenize_row

PROMPTS = Path(__file__).with_name("general_prompts.jsonl")
BATCH_ROWS = 8


class GeneralProbe:
    """The general prompts, tokenized once for the job's tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        rows = [tokenize_row(tokenizer, row) for row in read_chat_jsonl(PROMPTS)]
        self.batches = eval_batches(rows, BATCH_ROWS, tokenizer.pad_token_id)

    def loss(self, model: Any, stop: StopFlag | None = None) -> float:
        """Mean answer-token loss of the general prompts under `model` as it stands."""
        return eval_loss(model, self.batches, stop)
