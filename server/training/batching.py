"""Batching: a deterministic, length-grouped order of micro-batches per epoch, and padding rows into tensors.

Rows of similar length go together so little compute is spent on padding; which rows meet is
still shuffled per epoch. The plan for an epoch is a pure function of (lengths, batch size,
seed, epoch), so a resumed job recomputes exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tunevault.server.training.tokenization import IGNORE_INDEX, TokenizedRow

# Rows are sorted by length inside windows of this many batches (as HF's LengthGroupedSampler
# does): wide enough to cut padding, narrow enough to keep batches varied.
GROUPING_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (rows, length), right-padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # IGNORE_INDEX on context and padding
    tokens: int  # real (non-padding) tokens
    label_tokens: int  # tokens that carry a label


def epoch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices for each micro-batch of one epoch."""
    order = list(range(len(lengths)))
    rng = random.Random(f"batches/{seed}/{epoch}")
    rng.shuffle(order)
    window = batch_size * GROUPING_WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: (-lengths[i], i))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(rows: list[TokenizedRow], pad_token_id: int) -> Batch:
    """Right-pad rows into one batch."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        attention_mask[i, :n] = 1
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        tokens=int(attention_mask.sum()),
        label_tokens=int((labels != IGNORE_INDEX).sum()),
    )


def eval_batches(rows: list[TokenizedRow], batch_size: int, pad_token_id: int) -> list[Batch]:
    """Fixed, length-sorted batches for eval loss (order does not change a token-weighted mean)."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].input_ids), i))
    return [collate([rows[i] for i in order[s : s + batch_size]], pad_token_id) for s in range(0, len(order), batch_size)]


class BatchStream:
    """The endless, deterministic sequence of training micro-batches, epoch after epoch.

    `position` counts micro-batches handed out; it is all a checkpoint needs to resume the stream.
    """

    def __init__(self, rows: list[TokenizedRow], batch_size: int, seed: int, pad_token_id: int, position: int = 0) -> None:
        self.rows = rows
        self.lengths = [len(r.input_ids) for r in rows]
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.per_epoch = -(-len(rows) // batch_size)
        self.position = position
        self._plan_epoch: int | None = None
        self._plan: list[list[int]] = []

    def next(self) -> Batch:
        epoch, index = divmod(self.position, self.per_epoch)
        if epoch != self._plan_epoch:
            self._plan = epoch_plan(self.lengths, self.batch_size, self.seed, epoch)
            self._plan_epoch = epoch
        self.position += 1
        return collate([self.rows[i] for i in self._plan[index]], self.pad_token_id)

    @property
    def epochs_done(self) -> float:
        return self.position / self.per_epoch
