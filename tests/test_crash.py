"""Crash tests with real processes: SIGKILL the server or the worker again and again.

Every job must end exactly once in a terminal state, none duplicated, completed steps never
lost beyond one checkpoint interval, and the database must pass PRAGMA integrity_check.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

from tests.conftest import EXAMPLES, start_server, wait_for_state
from tunevault.v1 import tunevault_pb2 as pb

STEPS, EVERY = 24, 4
HP = {"max_steps": STEPS, "checkpoint_every": EVERY, "batch_size": 2, "eval_every": 8,
      "eval_accuracy_max_examples": 0, "seed": 3}
KILLS = 10


def _dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(EXAMPLES.joinpath("triage.jsonl").read_text().splitlines()[:40]) + "\n")
    return path


def _worker_pids(job_ids: set[str]) -> dict[str, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parts = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tunevault.server.worker.train" in parts:
            for job_id in job_ids:
                if job_id.encode() in parts:
                    found[job_id] = int(entry.name)
    return found


def _lost_steps(events: list[pb.JobEvent]) -> list[int]:
    """For each restart of a job, how many completed steps it had to redo."""
    lost, last_step, restarted = [], 0, False
    for event in events:
        if event.type in ("job.requeued", "job.retrying"):
            restarted = True
        elif event.type == "step":
            step = int(event.metrics["step"])
            if restarted:
                lost.append(max(0, last_step - (step - 1)))
                restarted = False
            last_step = max(last_step, step)
    return lost


def _check_outcome(client, job_ids: list[str], data_dir: Path) -> None:
    assert len({j.id for j in client.list_jobs(page_size=500).jobs}) == len(job_ids)  # nothing duplicated
    for job_id in job_ids:
        job = client.get_job(job_id)
        events = list(client.stream_events(job_id, follow=False))
        terminal = [e for e in events if e.type in ("job.succeeded", "job.failed", "job.cancelled")]
        assert job.state == pb.JOB_STATE_SUCCEEDED, (job, [e.type for e in events])
        assert len(terminal) == 1, [e.type for e in events]
        assert int(job.result.metrics["steps"]) == STEPS
        assert all(lost <= EVERY for lost in _lost_steps(events)), _lost_steps(events)
    with sqlite3.connect(data_dir / "tunevault.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_server_killed_again_and_again_loses_and_duplicates_nothing(tmp_path: Path, tiny_models_dir: Path) -> None:
    chance = random.Random(20261122)
    data_dir = tmp_path / "data"
    server = start_server(data_dir, tiny_models_dir, "--max-concurrent-jobs", "2")
    with server.client() as client:
        dataset = client.upload_dataset(_dataset(tmp_path))
        job_ids = [client.create_job(dataset.id, "tiny-llama", HP, idempotency_key=f"crash-{n}").id for n in range(3)]
    for _ in range(KILLS):
        time.sleep(chance.uniform(2.0, 7.0))
        server.stop(signal.SIGKILL)
        server = start_server(data_dir, tiny_models_dir, "--max-concurrent-jobs", "2")
        with server.client() as client:  # a retried create after the crash returns the same job
            assert client.create_job(dataset.id, "tiny-llama", HP, idempotency_key="crash-0").id == job_ids[0]
    try:
        with server.client() as client:
            for job_id in job_ids:
                wait_for_state(client, job_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=900)
            _check_outcome(client, job_ids, data_dir)
    finally:
        server.stop()


def test_worker_killed_again_and_again_is_retried_and_resumes(tmp_path: Path, tiny_models_dir: Path) -> None:
    chance = random.Random(7)
    data_dir = tmp_path / "data"
    server = start_server(data_dir, tiny_models_dir, "--retry-backoff", "0.2", "--retry-backoff-max", "2")
    try:
        with server.client() as client:
            dataset = client.upload_dataset(_dataset(tmp_path))
            job = client.create_job(dataset.id, "tiny-llama", HP, max_attempts=20)
            kills = 0
            while kills < KILLS:
                state = client.get_job(job.id).state
                if state == pb.JOB_STATE_SUCCEEDED:
                    break
                pid = _worker_pids({job.id}).get(job.id)
                if pid is None or client.get_job(job.id).step == 0 and chance.random() < 0.5:
                    time.sleep(0.3)
                    continue
                time.sleep(chance.uniform(0.5, 2.5))
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=900)
            _check_outcome(client, [job.id], data_dir)
            history = client.get_job(job.id).error_history
            assert len(history) >= min(kills, 5) and all("SIGKILL" in e.message for e in history)
    finally:
        server.stop()


def test_sigterm_checkpoints_requeues_and_the_job_finishes_after_restart(tmp_path: Path, tiny_models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, tiny_models_dir)
    with server.client() as client:
        dataset = client.upload_dataset(_dataset(tmp_path))
        job = client.create_job(dataset.id, "tiny-llama", {**HP, "checkpoint_every": 1000})
        for event in client.stream_events(job.id):
            if event.type == "step" and event.metrics["step"] >= 3:
                break
    assert server.stop(signal.SIGTERM, timeout=120) == 0
    events_file = data_dir / "tunevault.db"
    assert events_file.exists()
    server = start_server(data_dir, tiny_models_dir)
    try:
        with server.client() as client:
            events = list(client.stream_events(job.id, follow=False))
            assert any(e.type == "job.requeued" for e in events)
            assert any(e.type == "checkpoint" for e in events)  # taken on SIGTERM, not on the interval
            wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=600)
            _check_outcome(client, [job.id], data_dir)
    finally:
        server.stop()


def test_pause_and_resume_match_an_uninterrupted_run(tmp_path: Path, tiny_models_dir: Path) -> None:
    server = start_server(tmp_path / "data", tiny_models_dir)
    try:
        with server.client() as client:
            dataset = client.upload_dataset(_dataset(tmp_path))
            straight = client.create_job(dataset.id, "tiny-llama", HP)
            straight = wait_for_state(client, straight.id, {"SUCCEEDED", "FAILED"}, timeout=600)
            paused = client.create_job(dataset.id, "tiny-llama", HP)
            for event in client.stream_events(paused.id):
                if event.type == "step" and event.metrics["step"] >= 10:
                    client.pause_job(paused.id)
                    break
            held = wait_for_state(client, paused.id, {"PAUSED", "FAILED", "SUCCEEDED"}, timeout=300)
            assert held.state == pb.JOB_STATE_PAUSED and 0 < held.step < STEPS
            assert client.list_checkpoints(paused.id)[-1].step == held.step
            client.resume_job(paused.id)
            resumed = wait_for_state(client, paused.id, {"SUCCEEDED", "FAILED"}, timeout=600)
        a, b = straight.result.metrics["eval_loss"], resumed.result.metrics["eval_loss"]
        # Same seed, data order, RNG and optimizer state: only float summation order may differ.
        assert abs(a - b) <= 1e-3 * abs(a), (a, b)
        assert int(resumed.result.metrics["steps"]) == STEPS
    finally:
        server.stop()
