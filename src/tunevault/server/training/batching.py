"""Batching: a deterministic order of rows per epoch, and turning rows into tensors, padded or packed.

Training packs rows without padding: the rows of one optimizer step are laid end to end into
sequences of at most `pack_tokens` tokens, each row keeping its own position ids (0, 1, 2, ...).
transformers reads restarting position ids (with no attention mask) as packed documents and
builds a block-diagonal causal mask, so no token attends across a row boundary and a packed
step computes the same loss as the same rows padded (tests/test_training_packing.py shows it).
Evaluation keeps padded, length-sorted batches: there is no backward pass to save there.

The plan for an epoch is a pure function of (lengths, batch size, seed, epoch), so a resumed job
recomputes exactly the rows it would have seen.

DP-SGD jobs use neither: each step draws its rows by Poisson sampling (poisson_micro_batches),
padded one row per tensor row, because per-example gradients need each example alone in its row.

Every batch carries, computed here on the CPU, the positions whose logits are needed (those
followed by a labelled token) and their targets, so the training step needs no host sync to
find them.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import torch

from tunevault.server.training.tokenization import IGNORE_INDEX, TokenizedRow

# Unpacked plans sort rows by length inside windows of this many batches (as HF's
# LengthGroupedSampler does): wide enough to cut padding, narrow enough to keep batches varied.
GROUPING_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (rows, length)
    labels: torch.Tensor  # IGNORE_INDEX on context and padding
    attention_mask: torch.Tensor | None  # padded batches; None for packed ones
    position_ids: torch.Tensor | None  # packed batches: restarting at 0 for every packed row
    logits_index: torch.Tensor  # (rows, k) positions whose logits the loss needs
    targets: torch.Tensor  # (rows, k) the token each of those positions predicts; IGNORE_INDEX fills
    tokens: int  # real (non-padding) tokens
    label_tokens: int  # tokens that carry a label

    @property
    def slots(self) -> int:
        """Positions computed, padding included."""
        return self.input_ids.numel()


def epoch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True) -> list[list[int]]:
    """Row indices for each group of `batch_size` rows of one epoch."""
    order = list(range(len(lengths)))
    rng = random.Random(f"batches/{seed}/{epoch}")
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * GROUPING_WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: (-lengths[i], i))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices into `lengths` grouped into as few bins of at most `capacity` tokens as fit, evenly filled.

    Bins are padded to the longest one when they share a micro-batch, so even fill matters as
    much as few bins: rows go longest first into the emptiest bin (LPT scheduling), and the bin
    count is the smallest for which every row finds room. A row longer than the capacity gets a
    bin of its own (rows are truncated to max_seq_len before this, so with capacity >=
    max_seq_len that never happens).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    # Rows over half the capacity cannot share a bin with one another. Starting there matters for
    # short classification rows (24 tokens in packs of 27): counting up one bin at a time from
    # the token total took 88 s to pack the 2,048 rows of one DP-bench step, one bin per row.
    # Galloping up and bisecting back assumes that a count which fits stays fitting with more
    # bins; on 1,500 random cases it chose the same bins as counting up one at a time.
    lowest = max(1, -(-sum(lengths) // capacity), sum(1 for n in lengths if 2 * n > capacity))
    failed, count = lowest - 1, lowest
    bins = _fill_emptiest_first(order, lengths, capacity, count)
    while bins is None:  # gallop up to a count that fits...
        failed, count = count, max(count + 1, min(2 * count - lowest + 1, len(lengths)))
        bins = _fill_emptiest_first(order, lengths, capacity, count)
    while count - failed > 1:  # ...then bisect back towards the smallest that fits
        middle = (failed + count) // 2
        fitted = _fill_emptiest_first(order, lengths, capacity, middle)
        if fitted is None:
            failed = middle
        else:
            count, bins = middle, fitted
    return bins


def _fill_emptiest_first(order: list[int], lengths: list[int], capacity: int, count: int) -> list[list[int]] | None:
    """The non-empty bins of LPT over `count` bins, or None if some row fits in none of them.

    The emptiest bin has the most room, so a row that does not fit there fits nowhere: a heap of
    (fill, bin) finds it in log time where scanning every bin made each pass quadratic.
    """
    bins: list[list[int]] = [[] for _ in range(count)]
    heap = [(0, b) for b in range(count)]  # sorted, so already a heap
    for i in order:
        filled, b = heap[0]
        if bins[b] and filled + lengths[i] > capacity:
            return None
        bins[b].append(i)
        heapq.heapreplace(heap, (filled + lengths[i], b))
    return [b for b in bins if b]


def _logit_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, targets) per row, padded with position 0 / IGNORE_INDEX to a common width.

    Position p predicts token p+1, so p is needed when token p+1 carries a label. At least one
    column is kept even when nothing is labelled, so the forward pass keeps its usual shape.
    """
    wanted = torch.zeros_like(labels, dtype=torch.bool)
    wanted[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    per_row = [row.nonzero().squeeze(-1) for row in wanted]
    width = max(1, max(len(p) for p in per_row))
    positions = torch.zeros((labels.shape[0], width), dtype=torch.long)
    targets = torch.full((labels.shape[0], width), IGNORE_INDEX, dtype=torch.long)
    for r, found in enumerate(per_row):
        positions[r, : len(found)] = found
        targets[r, : len(found)] = labels[r, found + 1]
    return positions, targets


def _batch(input_ids: torch.Tensor, labels: torch.Tensor, *, tokens: int, attention_mask: torch.Tensor | None = None,
           position_ids: torch.Tensor | None = None) -> Batch:
    """A Batch with the positions whose logits the loss needs, found here on the CPU."""
    positions, targets = _logit_targets(labels)
    return Batch(input_ids=input_ids, labels=labels, attention_mask=attention_mask, position_ids=position_ids,
                 logits_index=positions, targets=targets, tokens=tokens,
                 label_tokens=int((targets != IGNORE_INDEX).sum()))


def collate(rows: list[TokenizedRow], pad_token_id: int) -> Batch:
    """Right-pad rows into one batch, one row each."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        attention_mask[i, :n] = 1
    return _batch(input_ids, labels, tokens=int(attention_mask.sum()), attention_mask=attention_mask)


def collate_packed(packs: list[list[TokenizedRow]], pad_token_id: int, width: int | None = None) -> Batch:
    """One tensor row per pack, its rows end to end with position ids restarting at each row.

    The first token of every row is unlabelled, so no row is ever asked to predict the next
    row's start. A shorter pack is filled with padding that forms a document of its own
    (positions from 0, no labels), which nothing else can attend to.
    """
    width = max(width or 0, max(sum(len(r.input_ids) for r in p) for p in packs))
    input_ids = torch.full((len(packs), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(packs), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(packs), width), dtype=torch.long)
    tokens = 0
    for i, rows in enumerate(packs):
        at = 0
        for row in rows:
            n = len(row.input_ids)
            input_ids[i, at : at + n] = torch.tensor(row.input_ids)
            labels[i, at + 1 : at + n] = torch.tensor(row.labels[1:])
            position_ids[i, at : at + n] = torch.arange(n)
            at += n
        position_ids[i, at:] = torch.arange(width - at)
        tokens += at
    return _batch(input_ids, labels, tokens=tokens, position_ids=position_ids)


def packed_micro_batches(
    rows: list[TokenizedRow], pack_tokens: int, packs_per_batch: int, pad_token_id: int, fixed_width: bool = False
) -> list[Batch]:
    """The rows of one optimizer step as packed micro-batches of at most `packs_per_batch` packs.

    `fixed_width` pads every pack to `pack_tokens`: on a GPU, kernels planned per shape (cuDNN
    attention) are then planned once instead of for every new micro-batch width.
    """
    bins = pack([len(r.input_ids) for r in rows], pack_tokens)
    # Longest packs first, so the packs sharing a micro-batch have similar lengths.
    bins.sort(key=lambda b: -sum(len(rows[i].input_ids) for i in b))
    groups = [bins[i : i + packs_per_batch] for i in range(0, len(bins), packs_per_batch)]
    width = pack_tokens if fixed_width else None
    return [collate_packed([[rows[i] for i in b] for b in group], pad_token_id, width) for group in groups]


def poisson_micro_batches(
    rows: list[TokenizedRow], sample_rate: float, rng: random.Random, batch_size: int, pad_token_id: int
) -> list[Batch]:
    """One DP-SGD step: every row independently with probability sample_rate, padded into micro-batches of at most batch_size rows.

    Poisson sampling is what the DP accountants assume (a fixed-size shuffled batch would need
    other accounting); the step's size varies around sample_rate x len(rows) and may be 0, which
    gives an empty list. rng must be secret (random.SystemRandom in the trainer): an adversary who
    knew which rows each step used would get no privacy amplification from sampling.
    """
    chosen = poisson_draw([len(row.input_ids) for row in rows], sample_rate, rng)
    return [collate([rows[i] for i in chosen[s : s + batch_size]], pad_token_id) for s in range(0, len(chosen), batch_size)]


def poisson_draw(lengths: list[int], sample_rate: float, rng: random.Random) -> list[int]:
    """The indexes of the examples one DP-SGD step uses: each independently with probability sample_rate.

    Longest first: less padding; the order inside a step does not change the sum of its clipped gradients.
    """
    chosen = [i for i in range(len(lengths)) if rng.random() < sample_rate]
    return sorted(chosen, key=lambda i: (-lengths[i], i))


def eval_batches(rows: list[TokenizedRow], batch_size: int, pad_token_id: int) -> list[Batch]:
    """Fixed, length-sorted batches for eval loss (order does not change a token-weighted mean)."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].input_ids), i))
    return [collate([rows[i] for i in order[s : s + batch_size]], pad_token_id) for s in range(0, len(order), batch_size)]


class BatchStream:
    """The endless, deterministic sequence of training rows, epoch after epoch, `batch_size` at a time.

    `position` counts groups of rows handed out; it is all a checkpoint needs to resume the
    stream. With `pack_tokens`, a step's groups are packed together instead of padded one by one.
    """

    def __init__(
        self,
        rows: list[TokenizedRow],
        batch_size: int,
        seed: int,
        pad_token_id: int,
        position: int = 0,
        pack_tokens: int | None = None,
        fixed_width: bool = False,
    ) -> None:
        self.rows = rows
        self.lengths = [len(r.input_ids) for r in rows]
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.pack_tokens = pack_tokens
        self.fixed_width = fixed_width
        self.per_epoch = -(-len(rows) // batch_size)
        self.position = position
        self._plan_epoch: int | None = None
        self._plan: list[list[int]] = []

    def _next_group(self) -> list[TokenizedRow]:
        epoch, index = divmod(self.position, self.per_epoch)
        if epoch != self._plan_epoch:
            # Packing removes padding whatever the lengths, so rows need not be grouped by length.
            self._plan = epoch_plan(self.lengths, self.batch_size, self.seed, epoch, group_by_length=self.pack_tokens is None)
            self._plan_epoch = epoch
        self.position += 1
        return [self.rows[i] for i in self._plan[index]]

    def next(self) -> Batch:
        """One padded micro-batch of `batch_size` rows."""
        return collate(self._next_group(), self.pad_token_id)

    def next_step(self, groups: int) -> list[Batch]:
        """The micro-batches of one optimizer step of `groups` x `batch_size` rows."""
        if self.pack_tokens is None:
            return [self.next() for _ in range(groups)]
        rows = [row for _ in range(groups) for row in self._next_group()]
        return packed_micro_batches(rows, self.pack_tokens, self.batch_size, self.pad_token_id, self.fixed_width)

    @property
    def epochs_done(self) -> float:
        return self.position / self.per_epoch
