"""Per-class exact match and the most frequent confusions, for tasks whose answers are labels.

Pure Python. A task is label-like when its validation answers are few and short (a route, a
section, a category): then one accuracy hides which classes the adapter learnt and which it
mixes up. Free-text answers get no table: a confusion there would only copy whole answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_LABELS = 30  # more distinct answers than this reads as free text, not a label set
MAX_LABEL_CHARS = 48
TOP_CONFUSIONS = 10


@dataclass(frozen=True)
class ClassScore:
    label: str
    examples: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples


def label_like(references: Sequence[str]) -> bool:
    labels = {r.strip() for r in references}
    return 2 <= len(labels) <= MAX_LABELS and all(0 < len(label) <= MAX_LABEL_CHARS for label in labels)


def per_class(answers: Sequence[tuple[str, str]]) -> list[ClassScore]:
    """(reference, answer) pairs -> each reference label's examples and exact matches, most examples first."""
    examples: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for reference, answer in answers:
        examples[reference.strip()] += 1
        correct[reference.strip()] += reference.strip() == answer.strip()
    return [ClassScore(label, count, correct[label]) for label, count in
            sorted(examples.items(), key=lambda item: (-item[1], item[0]))]


def confusions(answers: Sequence[tuple[str, str]], top: int = TOP_CONFUSIONS) -> list[tuple[str, str, int]]:
    """The most frequent (expected, answered instead, count); an answer is shortened to a label's length."""
    wrong = Counter((reference.strip(), _short(answer.strip())) for reference, answer in answers
                    if reference.strip() != answer.strip())
    return [(expected, answered, count) for (expected, answered), count in
            sorted(wrong.items(), key=lambda item: (-item[1], item[0]))[:top]]


def summary(answers: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
    """What metrics.json keeps: None unless the references are label-like."""
    if not answers or not label_like([reference for reference, _ in answers]):
        return None
    return {"per_class": [{**asdict(score), "accuracy": score.accuracy} for score in per_class(answers)],
            "confusions": [{"expected": e, "answered": a, "count": c} for e, a, c in confusions(answers)]}


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"
