"""Does the adapter say the identifiers its training answers held? Greedy answers to the original questions, checked.

For up to PROBE_ROWS training rows, the probe asks the trained model the row's own question,
as the user wrote it (before any redaction: the most the model could be given), and looks in
the greedy answer for each identifier that the row's answer held but its question did not.
An identifier the question already names proves nothing when repeated, so it is not counted;
one that only the answer held can only come back from memory. The scrubber finds the
identifiers (the same recognizers that redact), and the report keeps counts by type, never values.

With pii=redact the model never saw those values, so the count must be 0; with pii=off the
same probe shows what a plain fine-tune would give away, which is what makes the 0 mean something.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from tunevault.server.contract.formats import TrainingRow
from tunevault.server.training.stopping import StopFlag
from tunevault.server.training.tokenization import accuracy_prompt_ids

PROBE_ROWS = 48
GENERATION_BATCH_ROWS = 16
# Shorter values ("Dr", a two-digit day) turn up in any text; they would count noise as leaks.
MIN_VALUE_CHARS = 4


@dataclass
class LeakReport:
    rows_checked: int = 0  # training rows whose answers were scanned
    rows_probed: int = 0  # of those, rows with an identifier at risk: asked their question
    identifiers_at_risk: int = 0  # in a probed row's answer and not in its question
    identifiers_reproduced: int = 0
    reproduced_by_type: Counter[str] = field(default_factory=Counter)
    at_risk_by_type: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"rows_checked": self.rows_checked, "rows_probed": self.rows_probed, "identifiers_at_risk": self.identifiers_at_risk,
                "identifiers_reproduced": self.identifiers_reproduced,
                "at_risk_by_type": dict(sorted(self.at_risk_by_type.items())),
                "reproduced_by_type": dict(sorted(self.reproduced_by_type.items()))}


def _question_and_answer(row: TrainingRow) -> tuple[str, str]:
    if hasattr(row, "messages"):
        messages = row.messages  # type: ignore[union-attr]
        return " ".join(m.content for m in messages[:-1]), messages[-1].content
    return row.prompt, row.completion  # type: ignore[union-attr]


def identifiers_at_risk(rows: list[TrainingRow]) -> list[list[tuple[str, str]]]:
    """Per row, (type, value) of each identifier in its answer that its question does not contain."""
    from tunevault.server.privacy.pii.scrubber import scan_many

    pairs = [_question_and_answer(row) for row in rows]
    found = scan_many([answer for _, answer in pairs])
    at_risk = []
    for (question, answer), findings in zip(pairs, found):
        values = {(f.type, answer[f.start:f.end].strip()) for f in findings}
        at_risk.append(sorted((kind, value) for kind, value in values
                              if len(value) >= MIN_VALUE_CHARS and value.lower() not in question.lower()))
    return at_risk


def _greedy_answers(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=pad)
    answers = []
    for start in range(0, len(prompts), GENERATION_BATCH_ROWS):
        chunk = prompts[start:start + GENERATION_BATCH_ROWS]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, prompt in enumerate(chunk):  # left padding: every prompt ends where generation starts
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        answers.extend(tokenizer.decode(row, skip_special_tokens=True) for row in output[:, width:].tolist())
    return answers


def probe(model: Any, tokenizer: Any, original_rows: list[TrainingRow], max_len: int,
          stop: StopFlag | None = None, rows: int = PROBE_ROWS) -> LeakReport:
    """Counts identifiers of the original answers that the model reproduces from the original questions."""
    report = LeakReport()
    candidates = [r for r in original_rows if accuracy_prompt_ids(tokenizer, r, max_len) is not None][:rows]
    at_risk = identifiers_at_risk(candidates)
    chosen = [(row, risk) for row, risk in zip(candidates, at_risk) if risk]
    report.rows_checked, report.rows_probed = len(candidates), len(chosen)
    for _, risk in chosen:
        report.identifiers_at_risk += len(risk)
        report.at_risk_by_type.update(kind for kind, _ in risk)
    if not chosen:
        return report
    prompts = [accuracy_prompt_ids(tokenizer, row, max_len) or [] for row, _ in chosen]
    longest_answer = max(len(tokenizer(_question_and_answer(row)[1], add_special_tokens=False)["input_ids"])
                         for row, _ in chosen)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if stop is not None:
                stop.check()
            answers = _greedy_answers(model, tokenizer, prompts, longest_answer + 8)
    finally:
        model.train(was_training)
    for answer, (_, risk) in zip(answers, chosen):
        for kind, value in risk:
            if value.lower() in answer.lower():
                report.identifiers_reproduced += 1
                report.reproduced_by_type[kind] += 1
    return report
