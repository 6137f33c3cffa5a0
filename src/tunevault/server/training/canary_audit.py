"""The memorization audit of a job: plant canaries in its training rows, then measure what the adapter kept.

Planting happens on tokenized rows, after the data checks, so canaries never count as the
user's data (no duplicate warning, no validation split) yet train exactly like it: same
template, same loss mask, same packing. Measuring scores each canary's answer and its
look-alikes with the trained model and with the base model (adapter off; summed answer-token
loss = the sequence's negative log-likelihood) and asks the trained model for each secret by
greedy decoding from the question.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tunevault.server.contract.chat_data import ChatRow, Message
from tunevault.server.contract.formats import TextRow, TrainingRow
from tunevault.server.contract.hyperparameters import ResolvedHyperparameters
from tunevault.server.contract.job_spec import JobSpec
from tunevault.server.privacy.canaries import CANDIDATES, CHANCE_BITS, Canary, candidates_for, exposure, make_canaries
from tunevault.server.training import pii_leak_probe
from tunevault.server.training.evaluation import row_losses
from tunevault.server.training.job_data import JobData
from tunevault.server.training.stopping import StopFlag
from tunevault.server.training.tokenization import (
    TokenizedRow,
    accuracy_prompt_ids,
    tokenize_example,
    truncate_row,
)

# Greedy decoding gets the answer's length plus this much room to say the secret.
EXTRACTION_SLACK_TOKENS = 8


@dataclass(frozen=True)
class CanaryResult:
    record: str
    repetitions: int
    user_supplied: bool
    rank: int
    candidates: int
    exposure_bits: float
    extrapolated_bits: float
    extracted: bool  # greedy decoding from the question reproduced the secret
    # The same ranking by the base model (adapter off): the canary's exposure before the job. A
    # base model has tastes in digit strings, so one canary can start well above chance.
    base_rank: int
    base_exposure_bits: float
    # Ranked by how much training lowered each secret's loss (after - before) instead: the base
    # model's tastes cancel, so a canary training did not single out averages chance (1.44 bits)
    # here whatever the base model thought of it. This is the figure that shows memorization.
    calibrated_rank: int
    calibrated_exposure_bits: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # never the secret itself: the report is read by people the data is kept from


def canary_row(canary: Canary, data_format: str, secret: str | None = None) -> TrainingRow:
    """The canary in the job's own row shape: a chat turn, or prompt + completion for text formats."""
    if data_format in ("chat", "instruction"):
        return ChatRow((Message("user", canary.question), Message("assistant", canary.answer(secret))), 0)
    return TextRow(canary.question + " ", canary.answer(secret), 0)


def plant(tokenizer: Any, canaries: list[Canary], data_format: str) -> list[TokenizedRow]:
    """Each canary's tokenized row, repeated as often as it asks."""
    rows = []
    for canary in canaries:
        tokenized = tokenize_example(tokenizer, canary_row(canary, data_format))
        rows.extend([tokenized] * canary.repetitions)
    return rows


def _extracted(model: Any, tokenizer: Any, canary: Canary, data_format: str, answer_tokens: int) -> bool:
    from transformers import GenerationConfig

    prompt = accuracy_prompt_ids(tokenizer, canary_row(canary, data_format), max_len=4096)
    assert prompt is not None  # canary rows always ask a question
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=answer_tokens + EXTRACTION_SLACK_TOKENS,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    output = model.generate(input_ids=torch.tensor([prompt], device=device),
                            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=device),
                            generation_config=config)
    text = tokenizer.decode(output[0, len(prompt):].tolist(), skip_special_tokens=True)
    return canary.secret in text


def audit(model: Any, tokenizer: Any, canaries: list[Canary], data_format: str, seed: int,
          stop: StopFlag | None = None, candidates: int = CANDIDATES) -> list[CanaryResult]:
    """Exposure and extraction of every canary with the model as it is (adapter on), and its exposure before training.

    The before-training figures rank the same canary among the same look-alikes with the
    adapter switched off (a PEFT model's disable_adapter); the calibrated ones rank them by the
    change training made to each loss, so a base model that happens to like a secret's digits
    does not pass for memorization (the reference-model calibration of membership inference).
    """
    was_training = model.training
    model.eval()
    rng = random.Random(seed ^ 0x5EC12E7)  # candidates differ from the canaries' own draw
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results = []
    try:
        with torch.no_grad():
            for canary in canaries:
                if stop is not None:
                    stop.check()
                secrets = [canary.secret, *candidates_for(canary, candidates, rng)]
                rows = [tokenize_example(tokenizer, canary_row(canary, data_format, s)) for s in secrets]
                losses = row_losses(model, rows, pad)
                found = exposure(losses[0], losses[1:])
                extracted = _extracted(model, tokenizer, canary, data_format, rows[0].label_count)
                with model.disable_adapter():
                    base_losses = row_losses(model, rows, pad)
                before = exposure(base_losses[0], base_losses[1:])
                change = [after - base for after, base in zip(losses, base_losses)]
                calibrated = exposure(change[0], change[1:])
                results.append(CanaryResult(canary.record, canary.repetitions, canary.user_supplied, found.rank,
                                            found.candidates, found.exposure_bits, found.extrapolated_bits, extracted,
                                            before.rank, before.exposure_bits, calibrated.rank,
                                            calibrated.exposure_bits))
    finally:
        model.train(was_training)
    return results


class MemorizationAudit:
    """A job's audit from start to end: canaries planted in setup, measured with the leak probe at the end."""

    def __init__(self, canaries: list[Canary], data_format: str, resolved: ResolvedHyperparameters) -> None:
        assert resolved.max_seq_len is not None, "planted after the data fixed max_seq_len"
        self.canaries = canaries
        self.data_format = data_format
        self.max_seq_len = resolved.max_seq_len
        self.seed = resolved.seed
        self.validation_fraction = resolved.validation_fraction

    @classmethod
    def for_job(cls, resolved: ResolvedHyperparameters, data_format: str, secrets: tuple[str, ...]) -> "MemorizationAudit":
        """`secrets`: the user's canary secrets themselves (the hyperparameters hold placeholders)."""
        # Seeded so a job is reproducible; a string seed keeps this draw apart from the data order's.
        canaries = make_canaries(list(resolved.canary_repetitions), list(secrets),
                                 random.Random(f"canaries-{resolved.seed}"))
        return cls(canaries, data_format, resolved)

    @property
    def enabled(self) -> bool:
        return bool(self.canaries)

    def plant(self, tokenizer: Any, data: JobData) -> JobData:
        """The job's data with the canary rows added to its training rows (unchanged when the audit is off)."""
        if not self.enabled:
            return data
        rows = [truncate_row(r, self.max_seq_len) for r in plant(tokenizer, self.canaries, self.data_format)]
        return dataclasses.replace(data, train=data.train + [r for r in rows if r.label_count > 0])

    def run(self, model: Any, tokenizer: Any, spec: JobSpec, stop: StopFlag) -> dict[str, Any] | None:
        """Exposure of every canary and the identifier leak count, with the trained adapter on."""
        if not self.enabled:
            return None
        results = audit(model, tokenizer, self.canaries, self.data_format, self.seed, stop)
        leaks = pii_leak_probe.probe(model, tokenizer, training_rows(spec, self.validation_fraction, self.seed),
                                     self.max_seq_len, stop)
        return {
            "canaries": [r.to_dict() for r in results],
            "canaries_extracted": sum(r.extracted for r in results),
            "candidates_per_canary": CANDIDATES,
            "chance_exposure_bits": CHANCE_BITS,
            "identifier_leaks": leaks.to_dict(),
        }


def training_rows(spec: JobSpec, validation_fraction: float, seed: int) -> list[TrainingRow]:
    """The rows the job trained on as the user wrote them: before PII redaction, without the validation split."""
    from tunevault.server.contract import hyperparameters as hp
    from tunevault.server.contract.formats import read_dataset, split_validation

    rows = read_dataset(spec.unscrubbed_train_file or spec.train_file, None).rows
    if spec.validation_file is not None:
        return rows
    # The same split as job_data.prepare_job_data (redaction keeps rows in place): same size, same seed.
    train, _ = split_validation(rows, hp.validation_split_size(len(rows), validation_fraction), seed)
    return train


def figures(audit_result: dict[str, Any] | None) -> dict[str, float]:
    """The audit's headline numbers for the job's result metrics."""
    if not audit_result:
        return {}
    canaries = audit_result["canaries"]
    leaks = audit_result["identifier_leaks"]
    return {"canary_max_exposure_bits": max(c["exposure_bits"] for c in canaries),
            "canary_max_calibrated_exposure_bits": max(c["calibrated_exposure_bits"] for c in canaries),
            "canaries_extracted": audit_result["canaries_extracted"],
            "identifiers_at_risk": leaks["identifiers_at_risk"], "identifiers_reproduced": leaks["identifiers_reproduced"]}
