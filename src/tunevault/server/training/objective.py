"""The training objective: summed next-token cross-entropy over labelled (answer) tokens only.

The loss is returned as a sum with its token count, not a mean, so gradient accumulation can
divide by the tokens of the whole optimizer step: every answer token weighs the same whichever
micro-batch it landed in. Logits are computed only where a label follows (batch.logits_index,
found on the CPU when the batch was made, so nothing here waits on the device): for a
classification answer that is a handful of positions per row, and skipping the rest avoids most
of the vocabulary projection (49k x hidden per position on SmolLM2).

A job with long answers still has many labelled positions, and their float32 logits (with the
log-softmax and gradient cross-entropy keeps) grow as positions x vocabulary: 3 x 800 MB for 8
rows of 1,000 answer tokens on SmolLM2. Past CHUNKED_LOGITS_BYTES the model returns hidden states
at those positions instead (its lm_head swapped for an identity during the forward), and the
projection and cross-entropy run in chunks of CE_CHUNK_POSITIONS, each recomputed in backward
rather than kept: the logits are never all in memory at once.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from tunevault.server.contract import memory_estimate
from tunevault.server.training.batching import Batch
from tunevault.server.training.tokenization import IGNORE_INDEX

# Past this many bytes of float32 labelled logits they are chunked, CE_CHUNK_POSITIONS at a time
# (50 MB of logits per chunk over a 49k vocabulary); the memory estimate counts the same.
CHUNKED_LOGITS_BYTES = memory_estimate.CHUNKED_LOGITS_BYTES
CE_CHUNK_POSITIONS = memory_estimate.CE_CHUNK_POSITIONS
# Families whose forward changes the logits after lm_head (soft-capping, scaling): never chunked,
# as the chunks would skip that step.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = getattr(model, "_module", model)  # Opacus' GradSampleModule wraps the PEFT model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _keeps_per_row_positions() -> bool:
    """Whether a 2-D integer logits_to_keep means positions per row (transformers' slice_logits_to_keep).

    Older releases (5.17 on the GPU image, measured) index hidden_states[:, index] with it, which
    silently yields (rows, rows, k) logits; they do understand a 1-D tensor (one set of positions
    for every row).
    """
    import transformers.modeling_utils as modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


def _kept_logits(model: Any, inputs: dict[str, Any], index: torch.Tensor, cpu_index: torch.Tensor) -> torch.Tensor:
    """Logits at index (rows, k) only, through logits_to_keep in the form this transformers understands."""
    if _keeps_per_row_positions():
        return model(**inputs, logits_to_keep=index).logits  # (rows, k, vocab)
    # The union of every row's positions, then each row's own among them: found on the host from
    # the batch's CPU copy, so it costs no device sync.
    union, inverse = torch.unique(cpu_index, return_inverse=True)
    logits = model(**inputs, logits_to_keep=union.to(index.device, non_blocking=True)).logits  # (rows, u, vocab)
    return torch.take_along_dim(logits, inverse.to(index.device, non_blocking=True)[..., None], dim=1)


def model_inputs(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Forward-pass arguments: a packed batch passes position ids and no mask, which transformers
    turns into a causal mask that stops at every packed row's boundary."""
    inputs: dict[str, Any] = {"input_ids": batch.input_ids.to(device, non_blocking=True), "use_cache": False}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids.to(device, non_blocking=True)
    else:
        inputs["attention_mask"] = batch.attention_mask.to(device, non_blocking=True)
    return inputs


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 matmuls on a GPU while the LoRA weights (and their AdamW states) stay float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _answer_logits(model: Any, batch: Batch, upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at the positions the loss needs, (rows, k, vocab), in float32 unless not `upcast`; their targets, (rows, k))."""
    device = next(model.parameters()).device
    index = batch.logits_index.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    inputs = model_inputs(batch, device)
    with autocast(device):
        if _accepts_logits_to_keep(model):
            logits = _kept_logits(model, inputs, index, batch.logits_index)
        else:
            logits = torch.take_along_dim(model(**inputs).logits, index[..., None], dim=1)
    # Cross-entropy in float32 whatever the compute dtype: bf16 log-softmax over 49k classes is lossy.
    return (logits.float() if upcast else logits), targets


def _base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _chunkable(model: Any, batch: Batch) -> bool:
    """Whether this batch's labelled logits are big enough to chunk, on a model whose logits are plain lm_head output."""
    if hasattr(model, "_module"):  # Opacus: per-sample gradient hooks expect the model's own lm_head call
        return False
    base = _base_model(model)
    config = getattr(base, "config", None)
    if config is None or any(getattr(config, name, None) for name in LOGIT_POSTPROCESSING):
        return False
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return batch.label_tokens * vocab * 4 > CHUNKED_LOGITS_BYTES and base.get_output_embeddings() is not None


@contextlib.contextmanager
def _hidden_states_out(model: Any) -> Any:
    """The model returns its final hidden states where it would return logits; yields the lm_head it set aside."""
    base = _base_model(model)
    head = base.get_output_embeddings()
    base.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        base.set_output_embeddings(head)


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def _chunked_summed_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over labelled tokens, the vocabulary projection done CE_CHUNK_POSITIONS at a time."""
    from torch.utils.checkpoint import checkpoint

    with _hidden_states_out(model) as head:
        hidden, targets = _answer_logits(model, batch, upcast=False)  # (rows, k, hidden)
    keep = targets.reshape(-1) != IGNORE_INDEX
    hidden, targets = hidden.reshape(-1, hidden.shape[-1])[keep], targets.reshape(-1)[keep]
    device = hidden.device
    total = torch.zeros((), device=device)
    with autocast(device):
        for start in range(0, targets.shape[0], CE_CHUNK_POSITIONS):
            end = start + CE_CHUNK_POSITIONS
            # Checkpointed: backward recomputes this chunk's logits instead of keeping them.
            total = total + checkpoint(_chunk_loss, head, hidden[start:end], targets[start:end], use_reentrant=False)
    return total


def summed_token_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """(sum of cross-entropy over labelled tokens, number of labelled tokens) for one batch."""
    if _chunkable(model, batch):
        return _chunked_summed_loss(model, batch), batch.label_tokens
    logits, targets = _answer_logits(model, batch)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, batch.label_tokens


def _token_losses(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of each labelled token, (rows, k), 0 where nothing is labelled; the targets, (rows, k))."""
    logits, targets = _answer_logits(model, batch)
    tokens = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                             reduction="none").reshape(targets.shape)
    return tokens, targets


def row_summed_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Each row's summed cross-entropy over its labelled tokens, (rows,): its answer's negative log-likelihood."""
    return _token_losses(model, batch)[0].sum(dim=1)


def per_example_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(each row's mean cross-entropy over its own labelled tokens, (rows,); the batch's summed token loss, detached).

    DP-SGD clips each example's gradient, so the objective must be a sum of per-example terms:
    the summed token loss of the whole batch mixes rows through its token count, and a long
    answer would get a larger gradient (so be clipped harder) than a short one. A row's own mean
    makes every row an equal unit, as the privacy guarantee counts them. A row without labelled
    tokens contributes 0 (and so a zero gradient).
    """
    tokens, targets = _token_losses(model, batch)
    counts = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return tokens.sum(dim=1) / counts, tokens.detach().sum()
