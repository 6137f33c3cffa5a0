"""Evaluation: token-weighted eval loss on the validation split, and exact-match accuracy by greedy generation.

Both run in eval mode under no_grad, which is exactly the situation in which bitsandbytes would
repack NF4 weights on AVX512-BF16 CPUs; models evaluated here must have been through
quantized_model.pin_cpu_weight_layout() if they train again afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunevault.server.training.batching import Batch, collate
from tunevault.server.training.objective import row_summed_loss, summed_token_loss
from tunevault.server.training.stopping import StopFlag
from tunevault.server.training.tokenization import TokenizedRow

# Extra generated tokens allowed beyond the reference answer's length: room for a differently
# tokenized but equal answer (after strip) and its end-of-turn token, no room for rambling.
ACCURACY_SLACK_TOKENS = 4
GENERATION_BATCH_ROWS = 16
SCORE_BATCH_ROWS = 32


@dataclass(frozen=True)
class AccuracyExample:
    prompt_ids: list[int]
    reference: str
    reference_tokens: int


def eval_loss(model: Any, batches: list[Batch], stop: StopFlag | None = None) -> float:
    """Mean cross-entropy per answer token over all batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                if stop is not None:
                    stop.check()
                loss, n = summed_token_loss(model, batch)
                total += float(loss)
                count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


def row_losses(model: Any, rows: list[TokenizedRow], pad_id: int) -> list[float]:
    """Summed answer-token cross-entropy of each row (its negative log-likelihood, in nats)."""
    losses: list[float] = []
    for start in range(0, len(rows), SCORE_BATCH_ROWS):
        losses.extend(row_summed_loss(model, collate(rows[start:start + SCORE_BATCH_ROWS], pad_id)).tolist())
    return losses


def _generate_batch(model: Any, tokenizer: Any, examples: list[AccuracyExample]) -> list[str]:
    from transformers import GenerationConfig

    width = max(len(e.prompt_ids) for e in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Left padding: every prompt then ends at the same position and generation continues from there.
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, example in enumerate(examples):
        input_ids[i, width - len(example.prompt_ids) :] = torch.tensor(example.prompt_ids)
        attention_mask[i, width - len(example.prompt_ids) :] = 1
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(e.reference_tokens for e in examples) + ACCURACY_SLACK_TOKENS,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
    )
    texts = []
    for row in output[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def exact_match_accuracy(model: Any, tokenizer: Any, examples: list[AccuracyExample], stop: StopFlag | None = None) -> float:
    """Share of examples whose greedy answer equals the reference after strip()."""
    return match_share(exact_match_answers(model, tokenizer, examples, stop))


def match_share(answers: list[tuple[str, str]]) -> float:
    """Share of (reference, answer) pairs that match after strip(); NaN for none."""
    if not answers:
        return float("nan")
    return sum(reference.strip() == answer.strip() for reference, answer in answers) / len(answers)


def exact_match_answers(model: Any, tokenizer: Any, examples: list[AccuracyExample],
                        stop: StopFlag | None = None) -> list[tuple[str, str]]:
    """Each example's (reference, greedy answer), in the examples' order."""
    was_training = model.training
    model.eval()
    # Similar prompt lengths together keep left padding short.
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].prompt_ids), i))
    answers: dict[int, str] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(order), GENERATION_BATCH_ROWS):
                if stop is not None:
                    stop.check()
                chunk = order[start : start + GENERATION_BATCH_ROWS]
                answers.update(zip(chunk, _generate_batch(model, tokenizer, [examples[i] for i in chunk])))
    finally:
        model.train(was_training)
    return [(examples[i].reference, answers[i]) for i in range(len(examples))]
