"""bench/real_tasks.py: the splits are stratified, disjoint and seeded, and the score counts per class."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from real_tasks import DPKG_STATUS, Example, Score, build, normalise, stratified  # noqa: E402


def _examples() -> list[Example]:
    rows = [Example(f"{label} text {i}", label) for label, count in (("a", 40), ("b", 30), ("c", 12), ("d", 5))
            for i in range(count)]
    return rows + [Example("a text 0", "b")]  # the same text again under another label


def test_the_split_keeps_the_commonest_classes_with_equal_counts_and_no_shared_text() -> None:
    train, test = stratified(_examples(), classes=3, train_per_class=8, test_per_class=4, seed=1)
    assert sorted({e.label for e in train}) == ["a", "b", "c"]  # d has too few rows
    for label in "abc":
        assert sum(e.label == label for e in train) == 8 and sum(e.label == label for e in test) == 4
    assert not {e.text for e in train} & {e.text for e in test}
    assert len({e.text for e in train + test}) == len(train + test)


def test_the_split_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    first = stratified(_examples(), 3, 8, 4, seed=1)
    assert stratified(_examples(), 3, 8, 4, seed=1) == first
    assert stratified(_examples(), 3, 8, 4, seed=2) != first


def test_the_score_counts_exact_matches_per_class_and_the_confusions() -> None:
    score = Score()
    for gold, answer in (("libs", "libs"), ("libs", " libs.\nBecause..."), ("utils", "libs"), ("utils", "")):
        score.add(gold, answer)
    figures = score.as_dict()
    assert figures["exact_match"] == 0.5 and figures["rows"] == 4
    assert figures["per_class"] == {"libs": 1.0, "utils": 0.0}
    assert ["utils", "libs", 1] in figures["confusion"] and ["libs", "libs", 2] in figures["confusion"]
    assert normalise("  3\n") == "3"


@pytest.mark.skipif(not DPKG_STATUS.exists(), reason="not a Debian machine: no package data to build from")
def test_the_package_task_builds_from_this_machines_package_data() -> None:
    task = build("package-section", classes=4, train_per_class=5, test_per_class=3)
    assert len(task.labels) == 4 and len(task.train) == 20 and len(task.test) == 12
    row = task.chat_rows(task.test[:1])[0]["messages"]
    assert row[0]["content"].startswith("Which Debian archive section") and row[1]["content"] in task.labels
