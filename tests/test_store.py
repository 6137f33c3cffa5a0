"""Store contract: migrations, idempotency, claim order, transitions, events, recovery."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest

from tunevault.server.errors import FailedPrecondition, NotFound
from tunevault.server.sqlite import immediate_transaction, open_connection
from tunevault.server.store import JobState, Store, states
from tunevault.server.store.db import connect, migrate
from tunevault.server.store.states import (
    ALLOWED_FROM,
    TERMINAL_STATES,
    UNFINISHED_STATES,
    WORKER_STATES,
    in_states,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "tunevault.db")


def _dataset(store: Store) -> str:
    return store.insert_dataset(name="d", sha256="0" * 64, row_count=3, size_bytes=10, format="chat_jsonl",
                                path="datasets/d.jsonl").id


def _queued_job(store: Store, priority: int = 0, key: str | None = None) -> str:
    job, _ = store.create_job(dataset_id=_dataset(store), validation_dataset_id=None, base_model="m",
                              hyperparameters={}, idempotency_key=key, priority=priority)
    return store.transition(job.id, JobState.QUEUED, event_type="job.queued").id


def test_database_is_wal_and_migrations_run_once(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(db) == []
    assert {"datasets", "jobs", "events", "schema_migrations"} <= set(db.table_names())


def test_same_idempotency_key_returns_the_same_job(store: Store) -> None:
    dataset = _dataset(store)
    first, created = store.create_job(dataset_id=dataset, validation_dataset_id=None, base_model="m",
                                      hyperparameters={}, idempotency_key="k1")
    again, created_again = store.create_job(dataset_id=dataset, validation_dataset_id=None, base_model="m",
                                            hyperparameters={"epochs": 9}, idempotency_key="k1")
    assert created and not created_again
    assert again.id == first.id
    assert len(store.list_jobs(100)) == 1


def test_claim_takes_priority_then_fifo_and_only_once(store: Store) -> None:
    low_old, high, low_new = _queued_job(store), _queued_job(store, priority=5), _queued_job(store)
    claimed = [store.claim_next_job(60).id for _ in range(3)]
    assert claimed == [high, low_old, low_new]
    assert store.claim_next_job(60) is None
    assert all(store.get_job(j).attempt == 1 for j in claimed)


def test_illegal_transition_names_the_current_state(store: Store) -> None:
    job_id = _queued_job(store)
    store.claim_next_job(60)
    store.transition(job_id, JobState.SUCCEEDED, event_type="job.succeeded")
    with pytest.raises(FailedPrecondition, match="is SUCCEEDED"):
        store.transition(job_id, JobState.RUNNING, event_type="x")
    with pytest.raises(NotFound):
        store.transition("job_missing", JobState.QUEUED, event_type="x")


def test_events_are_numbered_per_job_in_order(store: Store) -> None:
    job_id = _queued_job(store)
    store.append_event(job_id, "step", "s", {"step": 1, "loss": 2.5})
    events = store.events_after(job_id, 0)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert [e.type for e in events] == ["job.created", "job.queued", "step"]
    assert events[-1].metrics == {"step": 1, "loss": 2.5}
    assert store.events_after(job_id, 2)[0].type == "step"


def test_cancel_of_queued_job_is_immediate_and_of_running_job_is_requested(store: Store) -> None:
    queued = _queued_job(store)
    running = _queued_job(store, priority=1)
    assert store.claim_next_job(60).id == running
    assert store.request_cancel(queued).state is JobState.CANCELLED
    cancelling = store.request_cancel(running)
    assert cancelling.state is JobState.CANCELLING and cancelling.cancel_requested


def test_restart_requeues_running_jobs_and_finishes_cancelling_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    running, cancelling = _queued_job(store), _queued_job(store)
    store.claim_next_job(60), store.claim_next_job(60)
    store.request_cancel(cancelling)
    store.close()
    reopened = Store(tmp_path / "t.db")  # as a new server process would
    assert reopened.requeue_orphans() == [running]
    assert reopened.get_job(running).state is JobState.QUEUED
    assert reopened.get_job(cancelling).state is JobState.CANCELLED
    assert reopened.integrity_check() == "ok"


def test_list_jobs_pages_newest_first_and_filters_by_state(store: Store) -> None:
    ids = [_queued_job(store) for _ in range(5)]
    store.claim_next_job(60)
    page = store.list_jobs(2)
    assert [j.id for j in page] == ids[::-1][:2]
    assert [j.id for j in store.list_jobs(10, before_id=page[-1].id)] == ids[::-1][2:]
    assert [j.id for j in store.list_jobs(10, states=[JobState.RUNNING])] == [ids[0]]


def test_a_job_cannot_be_created_on_a_dataset_deleted_after_it_was_looked_up(store: Store) -> None:
    dataset = _dataset(store)
    store.delete_dataset(dataset)  # as a DeleteDataset racing the CreateJob that already read the dataset
    with pytest.raises(NotFound, match=dataset):
        store.create_job(dataset_id=dataset, validation_dataset_id=None, base_model="m",
                         hyperparameters={}, idempotency_key=None)
    assert store.list_jobs(10) == []


def test_a_dataset_in_use_by_an_unfinished_job_cannot_be_deleted(store: Store) -> None:
    dataset = _dataset(store)
    job, _ = store.create_job(dataset_id=dataset, validation_dataset_id=None, base_model="m",
                              hyperparameters={}, idempotency_key=None, tenant="t1")
    assert store.tenant_usage("t1") == (0, 1)  # the dataset is the default tenant's
    for state in (JobState.QUEUED, JobState.PAUSED):  # unfinished, waiting
        store.transition(job.id, state, event_type="x")
        with pytest.raises(FailedPrecondition, match=job.id):
            store.delete_dataset(dataset)
    store.request_cancel(job.id)
    assert store.tenant_usage("t1") == (0, 0)
    assert store.delete_dataset(dataset).deleted_at is not None


def test_expired_leases_and_retention_see_only_their_states(store: Store) -> None:
    jobs = [_queued_job(store) for _ in range(4)]
    running, pausing, done = claimed = [store.claim_next_job(-1).id for _ in range(3)]  # leases already expired
    (queued,) = set(jobs) - set(claimed)
    store.update_job(queued, lease_expires_at=1.0)  # a stale lease on a job no worker holds: not expired
    store.request_pause(pausing)
    store.transition(done, JobState.SUCCEEDED, event_type="job.succeeded", finished_at=100.0)
    assert {j.id for j in store.expired_leases(now=1e12)} == {running, pausing}
    assert [j.id for j in store.finished_before(cutoff=200.0)] == [done]
    assert store.finished_before(cutoff=50.0) == []
    assert store.get_job(queued).state is JobState.QUEUED


def test_unfinished_states_are_every_state_a_job_can_leave() -> None:
    assert UNFINISHED_STATES == {source for sources in ALLOWED_FROM.values() for source in sources}
    assert not UNFINISHED_STATES & TERMINAL_STATES and WORKER_STATES <= UNFINISHED_STATES
    assert in_states([JobState.QUEUED, JobState.FAILED]) == ("state IN (?, ?)", ["FAILED", "QUEUED"])


def test_no_job_state_is_spelled_as_a_literal_in_the_store() -> None:
    # states.py is the one place; a literal elsewhere drifts when a state is added.
    literal = re.compile(r"""['"](%s)['"]""" % "|".join(state.value for state in JobState))
    store_dir = Path(states.__file__).parent
    offenders = [f"{path.name}:{number}" for path in sorted(store_dir.glob("*.py")) if path.name != "states.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == []


def test_a_failed_transaction_rolls_back_and_releases_the_lock(tmp_path: Path) -> None:
    connection, lock = open_connection(tmp_path / "t.db"), threading.Lock()
    connection.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(ZeroDivisionError):
        with immediate_transaction(connection, lock):
            connection.execute("INSERT INTO t VALUES (1)")
            1 / 0
    assert not connection.in_transaction and not lock.locked()
    with immediate_transaction(connection, lock):
        connection.execute("INSERT INTO t VALUES (2)")
    assert connection.execute("SELECT x FROM t").fetchall() == [(2,)]
    other = sqlite3.connect(tmp_path / "t.db")  # committed: another connection sees it
    assert other.execute("SELECT x FROM t").fetchall() == [(2,)]
    other.close()


def test_feedback_rows_list_newest_first_by_page_and_go_with_their_job(store: Store) -> None:
    job, other = _queued_job(store), _queued_job(store)
    made = [store.insert_feedback(feedback_id=f"fb_{n:020d}", job_id=job, tenant="default", rating=(1, -1, 0)[n % 3],
                                  has_rewrite=n % 3 == 2, sealed=b"sealed", created_by="tok_x") for n in range(5)]
    store.insert_feedback(feedback_id="fb_" + "9" * 20, job_id=other, tenant="default", rating=1, has_rewrite=False,
                          sealed=b"sealed", created_by=None)
    assert [f.id for f in store.list_feedback(job)] == [f.id for f in reversed(made)]
    assert [f.id for f in store.list_feedback(job, 2, before_id=made[3].id)] == [made[2].id, made[1].id]
    assert store.list_feedback(job)[0].has_rewrite is False and store.list_feedback(job)[2].has_rewrite is True
    with pytest.raises(sqlite3.IntegrityError):  # ratings are 1, -1 or 0
        store.insert_feedback(feedback_id="fb_" + "8" * 20, job_id=job, tenant="default", rating=2,
                              has_rewrite=False, sealed=b"", created_by=None)
    assert store.delete_feedback(job) == 5
    assert store.list_feedback(job) == [] and len(store.list_feedback(other)) == 1
