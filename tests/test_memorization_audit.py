"""The memorization audit through the real worker on the tiny model: canaries planted, exposure and leaks reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.tiny_model import WorkerRun, run_worker, triage_subset, write_job
from tunevault.server.privacy.canaries import CANDIDATES

TINY = "tiny-llama"
USER_SECRET = "QX-4471-ZP"
# Many steps at a high rate on few rows: the 64x canary is seen on most steps.
AUDIT_HP = {"max_steps": 24, "batch_size": 8, "learning_rate": 1e-2, "eval_every": 0, "checkpoint_every": 0,
            "eval_accuracy_max_examples": 0, "canary_repetitions": [1, 64], "canary_secrets": [USER_SECRET]}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> tuple[WorkerRun, Path]:
    root = tmp_path_factory.mktemp("audit")
    train = triage_subset(root / "train.jsonl", rows=24)
    write_job(root, "job-audit", tiny_models_dir / TINY, train, AUDIT_HP)
    return run_worker(root, "job-audit"), root / "job-audit"


def test_the_audit_reports_every_canarys_exposure_and_extraction(audited: tuple[WorkerRun, Path]) -> None:
    run, job_dir = audited
    assert run.returncode == 0, run.log
    canaries = run.of_type("canary")
    assert [int(e["metrics"]["repetitions"]) for e in canaries] == [1, 64]
    for event in canaries:
        figures = event["metrics"]
        assert 1 <= figures["rank"] <= CANDIDATES + 1
        assert figures["exposure_bits"] == pytest.approx(math.log2(CANDIDATES + 1) - math.log2(figures["rank"]))
        # The base model's ranking of the same canary and look-alikes, for comparison.
        assert 1 <= figures["base_rank"] <= CANDIDATES + 1
        assert figures["base_exposure_bits"] == pytest.approx(
            math.log2(CANDIDATES + 1) - math.log2(figures["base_rank"]))
        assert figures["calibrated_exposure_bits"] == pytest.approx(
            math.log2(CANDIDATES + 1) - math.log2(figures["calibrated_rank"]))
        assert figures["extracted"] in (0.0, 1.0)
    summary = run.of_type("memorization")[0]["metrics"]
    result = run.events[-1]["metrics"]
    assert result["canary_max_exposure_bits"] == max(e["metrics"]["exposure_bits"] for e in canaries)
    assert result["canaries_extracted"] == summary["canaries_extracted"]

    metrics = json.loads((job_dir / "artifacts" / "metrics.json").read_text())
    audit = metrics["privacy"]["memorization_audit"]
    assert [c["repetitions"] for c in audit["canaries"]] == [1, 64]
    assert audit["canaries"][0]["user_supplied"] and not audit["canaries"][1]["user_supplied"]
    # The report names records and figures, never the planted secrets.
    shown = json.dumps(audit) + "".join(e["message"] for e in run.events)
    assert USER_SECRET not in shown
    assert "Memorization audit" in (job_dir / "artifacts" / "report.md").read_text()


def test_the_most_repeated_canary_is_learnt_better_than_its_look_alikes(audited: tuple[WorkerRun, Path]) -> None:
    run, _ = audited
    repeated = next(e for e in run.of_type("canary") if e["metrics"]["repetitions"] == 64)["metrics"]
    # 64 sightings at lr 1e-2 make even a random 2-layer model prefer this secret to almost every
    # look-alike: far above the ~1.44 bits of a secret it never saw.
    assert repeated["exposure_bits"] > 4.0, repeated
    # ... and the base model did not: the exposure is the training's, not a taste the base model had.
    assert repeated["base_exposure_bits"] < repeated["exposure_bits"] - 2.0, repeated
    # Training lowered its loss more than almost any look-alike's.
    assert repeated["calibrated_exposure_bits"] > 4.0, repeated


def test_identifiers_in_training_answers_are_counted_and_looked_for(tmp_path: Path, tiny_models_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Who is the patient in referral {n}?"},
                          {"role": "assistant", "content": f"Margaret Okafor, MRN 00{4821 + n}, seen 03/14/2025."}]}
            for n in range(12)]
    train = tmp_path / "pii.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    write_job(tmp_path, "job-leaks", tiny_models_dir / TINY, train,
              {"max_steps": 2, "batch_size": 4, "eval_accuracy_max_examples": 0, "canary_repetitions": [1],
               "validation_fraction": 0.25})
    run = run_worker(tmp_path, "job-leaks")
    assert run.returncode == 0, run.log
    leaks = json.loads((tmp_path / "job-leaks" / "artifacts" / "metrics.json").read_text())[
        "privacy"]["memorization_audit"]["identifier_leaks"]
    # 9 training rows (3 held out), each answer with a name, an MRN and a date its question lacks.
    assert leaks["rows_checked"] == 9 and leaks["rows_probed"] == 9
    assert leaks["at_risk_by_type"].get("MRN") == 9 and leaks["at_risk_by_type"].get("NAME") == 9
    assert 0 <= leaks["identifiers_reproduced"] <= leaks["identifiers_at_risk"]
    assert "Okafor" not in json.dumps(leaks)
