"""The training objective: summed next-token cross-entropy over labelled (answer) tokens only.

The loss is returned as a sum with its token count, not a mean, so gradient accumulation can
divide by the tokens of the whole optimizer step: every answer token weighs the same whichever
micro-batch it landed in. Logits are computed only where a label follows: for a classification
answer that is a handful of positions per row, and skipping the rest avoids most of the
vocabulary projection (49k x hidden per position on SmolLM2).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from tunevault.server.training.batching import Batch
from tunevault.server.training.tokenization import IGNORE_INDEX

try:  # transformers >= 5 accepts a per-row boolean mask for logits_to_keep
    from transformers.modeling_utils import slice_logits_to_keep as _per_row_keep  # noqa: F401

    PER_ROW_LOGITS = True
except ImportError:  # pragma: no cover - older transformers: one set of positions for all rows
    PER_ROW_LOGITS = False


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def summed_token_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """(sum of cross-entropy over labelled tokens, number of labelled tokens) for one batch."""
    device = next(model.parameters()).device
    labels = batch.labels.to(device)
    # Position p predicts token p+1, so a position matters when the token after it has a label.
    wanted = torch.zeros_like(labels, dtype=torch.bool)
    wanted[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    count = int(wanted.sum())
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
        "use_cache": False,
    }

    if _accepts_logits_to_keep(model) and PER_ROW_LOGITS:
        logits = model(**inputs, logits_to_keep=wanted).logits  # (count, vocab)
        targets = labels[:, 1:][wanted[:, :-1]]
    elif _accepts_logits_to_keep(model):
        positions = wanted.any(dim=0).nonzero().squeeze(-1)
        logits = model(**inputs, logits_to_keep=positions).logits  # (rows, len(positions), vocab)
        targets = labels[:, positions + 1]
    else:
        logits = model(**inputs).logits[:, :-1]
        targets = labels[:, 1:]
    # Cross-entropy in float32 whatever the compute dtype: bf16 log-softmax over 49k classes is lossy.
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, count
