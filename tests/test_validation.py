"""The VALIDATING step on the real server: statistics and warnings before queueing, bad jobs fail fast."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import RunningServer, start_server, wait_for_state
from tunevault.server.store import JobState, Store
from tunevault.v1 import tunevault_pb2 as pb

LATER = time.time() + 86400  # keeps a validated job QUEUED: these tests are about what comes before


def _row(note: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": note}, {"role": "assistant", "content": answer}]}


def _upload(server: RunningServer, path: Path, rows: list[dict]):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with server.client() as client:
        return client.upload_dataset(path)


def _events(client, job_id: str) -> list:
    return list(client.stream_events(job_id, follow=False))


def test_a_job_is_validated_with_statistics_before_it_is_queued(server: RunningServer, tmp_path: Path) -> None:
    rows = [_row(f"Note {n}: itchy rash on both shins for {n} days.", "dermatology") for n in range(10)]
    rows += [rows[0]] * 5  # six copies: a validation split of 4 rows leaves at least two in training
    dataset = _upload(server, tmp_path / "d.jsonl", rows)
    with server.client() as client:
        created = client.create_job(dataset.id, "tiny-llama", {"validation_fraction": 0.25}, not_before=LATER)
        assert created.state == pb.JOB_STATE_VALIDATING
        queued = wait_for_state(client, created.id, {"QUEUED", "FAILED"}, timeout=300)
        assert queued.state == pb.JOB_STATE_QUEUED, queued
        events = _events(client, created.id)
    types = [e.type for e in events]
    assert types.index("job.created") < types.index("job.validated")
    assert "job.started" not in types  # validated without a training slot
    validated = next(e for e in events if e.type == "job.validated")
    figures = validated.metrics
    assert figures["train_rows"] + figures["validation_rows"] == 15
    assert figures["train_tokens"] > 0 and figures["rows_learning_to_stop"] == figures["train_rows"]
    assert figures["dropped_rows"] == 0 and figures["truncated_rows"] == 0
    assert "training rows" in validated.message and "chat format" in validated.message
    # The repeats are a warning, heard before the job runs, not a failure.
    assert figures["duplicate_rows"] >= 1
    warnings = [e.message for e in events if e.type == "data.warning"]
    assert any("repeat an earlier row" in w for w in warnings), warnings


def test_data_that_cannot_train_fails_validation_with_invalid_argument(server: RunningServer, tmp_path: Path) -> None:
    # Every prompt is longer than max_seq_len, so no answer token is ever seen.
    rows = [_row("Referral note: " + "itchy rash on both shins " * 20 + str(n), "dermatology") for n in range(8)]
    dataset = _upload(server, tmp_path / "long.jsonl", rows)
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", {"max_seq_len": 16})
        failed = wait_for_state(client, job.id, {"FAILED", "QUEUED", "RUNNING", "SUCCEEDED"}, timeout=300)
        assert failed.state == pb.JOB_STATE_FAILED, failed
        assert failed.error.code == "INVALID_ARGUMENT"
        assert "no training row has an answer token within max_seq_len=16" in failed.error.message
        types = [e.type for e in _events(client, job.id)]
    assert "job.started" not in types and "job.validated" not in types


def test_settings_the_model_cannot_take_fail_validation_naming_the_field(server: RunningServer, tmp_path: Path,
                                                                         tiny_models_dir: Path) -> None:
    dataset = _upload(server, tmp_path / "d.jsonl", [_row(f"Note {n}: cough.", "pulmonology") for n in range(8)])
    positions = json.loads((tiny_models_dir / "tiny-llama" / "config.json").read_text())["max_position_embeddings"]
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", {"max_seq_len": positions * 2})
        failed = wait_for_state(client, job.id, {"FAILED", "QUEUED", "RUNNING", "SUCCEEDED"}, timeout=300)
    assert failed.state == pb.JOB_STATE_FAILED, failed
    assert failed.error.code == "INVALID_ARGUMENT"
    assert "max_seq_len" in failed.error.message and str(positions) in failed.error.message


def test_cancel_while_validating_stays_cancelled(server: RunningServer, tmp_path: Path) -> None:
    dataset = _upload(server, tmp_path / "d.jsonl", [_row(f"Note {n}: cough.", "pulmonology") for n in range(8)])
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", {}, not_before=LATER)
        assert client.cancel_job(job.id).state == pb.JOB_STATE_CANCELLED
        time.sleep(0.5)
        # Another job validated after it proves the step ran meanwhile; the cancel still holds.
        later = client.create_job(dataset.id, "tiny-llama", {}, not_before=LATER)
        wait_for_state(client, later.id, {"QUEUED", "FAILED"}, timeout=300)
        assert client.get_job(job.id).state == pb.JOB_STATE_CANCELLED


def test_a_job_left_validating_by_a_crash_is_validated_after_the_restart(tmp_path: Path,
                                                                          tiny_models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, tiny_models_dir)
    dataset = _upload(server, tmp_path / "d.jsonl", [_row(f"Note {n}: cough.", "pulmonology") for n in range(8)])
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", {}, not_before=LATER)
    server.stop(sig=9)
    store = Store(data_dir / "tunevault.db")
    try:
        if store.get_job(job.id).state is not JobState.VALIDATING:
            # The kill came after the validation finished: put the job back as a crash mid-way leaves it.
            store.update_job(job.id, state=JobState.VALIDATING.value)
    finally:
        store.close()
    server = start_server(data_dir, tiny_models_dir)
    try:
        with server.client() as client:
            assert wait_for_state(client, job.id, {"QUEUED", "FAILED"}, timeout=300).state == pb.JOB_STATE_QUEUED
    finally:
        server.stop()


def test_a_dp_job_on_too_little_data_is_warned_with_numbers_before_it_is_queued(server: RunningServer,
                                                                                 tmp_path: Path) -> None:
    rows = [_row(f"Note {n}: itchy rash on both shins for {n} days.", "dermatology") for n in range(40)]
    dataset = _upload(server, tmp_path / "d.jsonl", rows)
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", {"dp_epsilon": 8.0}, not_before=LATER)
        queued = wait_for_state(client, job.id, {"QUEUED", "FAILED"}, timeout=300)
        assert queued.state == pb.JOB_STATE_QUEUED, queued
        events = _events(client, job.id)
    plan = next(e for e in events if e.type == "dp.plan")
    assert 0 < plan.metrics["dp_planned_epsilon"] <= 8.0 and plan.metrics["dp_noise_multiplier"] > 0
    warnings = [e.message for e in events if e.type == "dp.warning"]
    assert any(w.startswith("too little data for DP to learn much") and "Smallest change that helps" in w
               for w in warnings), warnings
    types = [e.type for e in events]
    assert types.index("dp.plan") < types.index("job.validated")
