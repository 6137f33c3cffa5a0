"""Per-class exact match and confusions: only for label-like answers, with the counts a reader can check."""

from __future__ import annotations

from tunevault.server.training.label_scores import confusions, label_like, per_class, summary

ANSWERS = [("cardiology", "cardiology"), ("cardiology", "cardiology"), ("cardiology", "neurology"),
           ("neurology", "neurology"), ("dermatology", "neurology"), ("dermatology", " dermatology\n")]


def test_each_class_counts_its_own_examples_and_matches_after_strip() -> None:
    scores = {s.label: (s.examples, s.correct) for s in per_class(ANSWERS)}
    assert scores == {"cardiology": (3, 2), "neurology": (1, 1), "dermatology": (2, 1)}
    assert [s.label for s in per_class(ANSWERS)][0] == "cardiology"  # most examples first


def test_confusions_are_the_most_frequent_mistakes_first() -> None:
    mistakes = ANSWERS + [("dermatology", "neurology")]
    assert confusions(mistakes) == [("dermatology", "neurology", 2), ("cardiology", "neurology", 1)]
    assert confusions([("a", "x" * 200), ("b", "b")])[0][1] == "x" * 47 + "…"  # a runaway answer, shortened


def test_free_text_answers_get_no_table() -> None:
    assert label_like(["cardiology", "neurology"])
    assert not label_like(["cardiology"])  # one class: nothing to compare
    assert not label_like([f"label {i}" for i in range(31)])
    assert not label_like(["Take it with food and see your doctor if the rash spreads beyond the elbow."] * 2 + ["x"])
    assert summary([("A long free-text answer that is no label at all, clearly", "y"), ("b", "b")]) is None
    assert summary([]) is None


def test_the_summary_is_plain_json_with_accuracy_per_class() -> None:
    found = summary(ANSWERS)
    assert found["per_class"][0] == {"label": "cardiology", "examples": 3, "correct": 2, "accuracy": 2 / 3}
    assert found["confusions"][0] == {"expected": "cardiology", "answered": "neurology", "count": 1}
