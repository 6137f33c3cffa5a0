"""bench/paired_gap.py: the bootstrap interval's arithmetic, and that its row-by-row scoring is the job's eval_loss."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tiny_model import run_worker, triage_subset, write_job

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
try:
    import paired_gap
finally:
    sys.path.remove(str(REPO / "bench"))


def test_a_constant_ratio_gives_that_gap_and_a_collapsed_interval() -> None:
    base = [1.0, 2.0, 0.5, 3.0, 1.5]
    gap = paired_gap.paired_gap([1.1 * x for x in base], base, [2, 4, 1, 6, 3], resamples=200)
    assert gap.gap == pytest.approx(0.1)
    assert gap.low == pytest.approx(0.1) and gap.high == pytest.approx(0.1)
    assert gap.loss_b == pytest.approx(sum(base) / 16)


def test_the_interval_holds_the_gap_and_narrows_with_more_rows() -> None:
    import random

    rng = random.Random(1)

    def pair(n: int) -> tuple[list[float], list[float]]:
        b = [rng.uniform(0.5, 1.5) for _ in range(n)]
        return [x * rng.uniform(0.9, 1.3) for x in b], b

    few, many = paired_gap.paired_gap(*pair(50), [1] * 50), paired_gap.paired_gap(*pair(2000), [1] * 2000)
    for gap in (few, many):
        assert gap.low < gap.gap < gap.high
    assert many.high - many.low < (few.high - few.low) / 3  # about sqrt(40) narrower


def test_unpaired_losses_are_refused() -> None:
    with pytest.raises(ValueError, match="one loss per row"):
        paired_gap.paired_gap([1.0, 2.0], [1.0], [1, 1])


def test_row_scores_reproduce_the_jobs_own_eval_loss(tmp_path: Path, tiny_models_dir: Path) -> None:
    """The bench's re-scoring measures what the job measured: its token-weighted mean is the job's eval_loss."""
    train = triage_subset(tmp_path / "train.jsonl", rows=24)
    validation = triage_subset(tmp_path / "validation.jsonl", rows=12, start=24)
    model = tiny_models_dir / "tiny-llama"
    write_job(tmp_path / "jobs", "job", model, train,
              {"max_steps": 3, "batch_size": 4, "eval_every": 0, "eval_accuracy_max_examples": 0}, validation)
    run = run_worker(tmp_path / "jobs", "job")
    assert run.returncode == 0, run.log
    losses, tokens = paired_gap.adapter_row_losses(model, tmp_path / "jobs" / "job" / "artifacts", validation)
    assert len(losses) == 12
    assert sum(losses) / sum(tokens) == pytest.approx(run.events[-1]["metrics"]["eval_loss"], rel=1e-4)
