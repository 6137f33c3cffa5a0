"""The store: every read and write of datasets, jobs and events goes through Store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from tunevault.server.errors import FailedPrecondition, NotFound
from tunevault.server.ids import new_id
from tunevault.server.store import audit
from tunevault.server.store.db import connect
from tunevault.server.store.records import DatasetRecord, EventRecord, JobRecord, TokenRecord
from tunevault.server.store.states import ALLOWED_FROM, WORKER_STATES, JobState


class Store:
    """One connection, one writer at a time (a lock), explicit BEGIN IMMEDIATE transactions.

    Readers share the same connection under the lock; SQLite answers them in microseconds,
    and one connection keeps the "one writer" discipline obvious.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db: sqlite_utils.Database = connect(self.path)
        self._lock = threading.RLock()
        self._events_changed = threading.Condition(self._lock)
        self._transition_listeners: list[Callable[[JobRecord], None]] = []

    def on_transition(self, listener: Callable[[JobRecord], None]) -> None:
        """Calls `listener(job)` after every state change, wherever it came from (API or scheduler)."""
        self._transition_listeners.append(listener)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite_utils.Database]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self._db.query(sql, params))
        return rows[0] if rows else None

    # Datasets -----------------------------------------------------------------------

    def insert_dataset(self, *, name: str, sha256: str, row_count: int, size_bytes: int,
                       format: str, path: str, dataset_id: str | None = None, tenant: str = "default",
                       encryption_key_id: str | None = None) -> DatasetRecord:
        record = DatasetRecord(
            id=dataset_id or new_id("ds"), name=name, sha256=sha256, row_count=row_count,
            size_bytes=size_bytes, format=format, path=path, created_at=time.time(), tenant=tenant,
            encryption_key_id=encryption_key_id,
        )
        with self._transaction() as db:
            db["datasets"].insert(record.__dict__)
        return record

    def get_dataset(self, dataset_id: str, tenant: str | None = None) -> DatasetRecord:
        """The dataset; NotFound also when it belongs to another tenant than `tenant` (None: any)."""
        row = self._one("SELECT * FROM datasets WHERE id = ? AND (? IS NULL OR tenant = ?) AND deleted_at IS NULL",
                        [dataset_id, tenant, tenant])
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found")
        return DatasetRecord.from_row(row)

    def delete_dataset(self, dataset_id: str) -> DatasetRecord:
        """Marks the dataset deleted, unless an unfinished job uses it (FailedPrecondition naming them).

        One transaction, so no job can be queued on it between the check and the mark; removing
        the file and destroying its key are the caller's (privacy/keys.py), after this.
        """
        with self._transaction() as db:
            rows = list(db.query("SELECT * FROM datasets WHERE id = ? AND deleted_at IS NULL", [dataset_id]))
            if not rows:
                raise NotFound(f"dataset {dataset_id!r} not found")
            users = [r["id"] for r in db.query(
                "SELECT id FROM jobs WHERE (dataset_id = ? OR validation_dataset_id = ?) AND state IN "
                "('VALIDATING', 'QUEUED', 'RUNNING', 'PAUSING', 'PAUSED', 'CANCELLING') ORDER BY id LIMIT 5",
                [dataset_id, dataset_id])]
            if users:
                raise FailedPrecondition(f"dataset {dataset_id} is used by unfinished job(s) {', '.join(users)}; "
                                         "cancel them or wait for them to finish")
            deleted_at = time.time()
            db.execute("UPDATE datasets SET deleted_at = ? WHERE id = ?", [deleted_at, dataset_id])
        return DatasetRecord.from_row({**rows[0], "deleted_at": deleted_at})

    def list_datasets(self, limit: int, before_id: str | None = None, tenant: str | None = None) -> list[DatasetRecord]:
        sql = ("SELECT * FROM datasets WHERE (? IS NULL OR id < ?) AND (? IS NULL OR tenant = ?) "
               "AND deleted_at IS NULL ORDER BY id DESC LIMIT ?")
        with self._lock:
            rows = list(self._db.query(sql, [before_id, before_id, tenant, tenant, limit]))
        return [DatasetRecord.from_row(r) for r in rows]

    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(bytes of datasets, jobs waiting or running) owned by `tenant`, for its quotas."""
        with self._lock:
            stored = list(self._db.query("SELECT COALESCE(SUM(size_bytes), 0) AS n FROM datasets WHERE tenant = ? "
                                         "AND deleted_at IS NULL",
                                         [tenant]))[0]["n"]
            pending = list(self._db.query(
                "SELECT COUNT(*) AS n FROM jobs WHERE tenant = ? AND state IN "
                "('VALIDATING', 'QUEUED', 'RUNNING', 'PAUSING', 'PAUSED', 'CANCELLING')", [tenant]))[0]["n"]
        return int(stored), int(pending)

    # Jobs ---------------------------------------------------------------------------

    def create_job(self, *, dataset_id: str, validation_dataset_id: str | None, base_model: str,
                   hyperparameters: dict[str, Any], idempotency_key: str | None,
                   display_name: str = "", priority: int = 0, max_attempts: int = 3,
                   not_before: float | None = None, tenant: str = "default",
                   created_by: str | None = None, pii_mode: str = "off",
                   queue: bool = False, audit_details: dict[str, Any] | None = None) -> tuple[JobRecord, bool]:
        """Inserts a VALIDATING job, or returns the job already made with this idempotency key.

        The lookup and the insert share one transaction, so two racing retries of the same
        request cannot both insert. With `queue`, the job skips validation and is moved to
        QUEUED at once (stores and tests that need no validation step); with `audit_details`
        it is audited in that same transaction: one fsync per CreateJob instead of two.
        """
        with self._transaction() as db:
            if idempotency_key:
                existing = list(db.query("SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?",
                                         [tenant, idempotency_key]))
                if existing:
                    return JobRecord.from_row(existing[0]), False
            wanted = {dataset_id, validation_dataset_id} - {None}
            live = list(db.query(f"SELECT id FROM datasets WHERE deleted_at IS NULL AND id IN ({','.join('?' * len(wanted))})",
                                 list(wanted)))
            if len(live) != len(wanted):
                # Deleted since the caller looked it up: its key is gone, a job on it could never run.
                raise NotFound(f"dataset {(wanted - {r['id'] for r in live}).pop()!r} not found")
            now = time.time()
            job_id = new_id("job")
            db["jobs"].insert({
                "id": job_id, "state": JobState.VALIDATING.value, "dataset_id": dataset_id,
                "validation_dataset_id": validation_dataset_id, "base_model": base_model,
                "hyperparameters": json.dumps(hyperparameters), "idempotency_key": idempotency_key or None,
                "display_name": display_name, "priority": priority, "max_attempts": max_attempts,
                "created_at": now, "not_before": not_before, "tenant": tenant, "created_by": created_by,
                "pii_mode": pii_mode,
            })
            self._insert_event(db, job_id, "job.created", "job created", {}, JobState.VALIDATING)
            if queue:
                db.execute("UPDATE jobs SET state = 'QUEUED', queued_at = ? WHERE id = ?", [now, job_id])
                self._insert_event(db, job_id, "job.queued", "queued", {}, JobState.QUEUED)
            if audit_details is not None:
                self._append_audit(db, principal=created_by or "system", tenant=tenant, action="CreateJob",
                                   job_id=job_id, dataset_id=dataset_id, details=audit_details)
        self._notify()
        return self.get_job(job_id), True

    def get_job(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job; NotFound also when it belongs to another tenant than `tenant` (None: any)."""
        row = self._one("SELECT * FROM jobs WHERE id = ? AND (? IS NULL OR tenant = ?)", [job_id, tenant, tenant])
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        return JobRecord.from_row(row)

    def list_jobs(self, limit: int, states: Sequence[JobState] = (),
                  before_id: str | None = None, tenant: str | None = None) -> list[JobRecord]:
        clauses, params = ["(? IS NULL OR id < ?)", "(? IS NULL OR tenant = ?)"], [before_id, before_id, tenant, tenant]
        if states:
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(s.value for s in states)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = list(self._db.query(sql, [*params, limit]))
        return [JobRecord.from_row(r) for r in rows]

    def oldest_validating_jobs(self, limit: int, excluding: Sequence[str] = ()) -> list[JobRecord]:
        """VALIDATING jobs in the order they were created, for the validation step to take in turn."""
        sql = (f"SELECT * FROM jobs WHERE state = 'VALIDATING' AND id NOT IN ({','.join('?' * len(excluding))}) "
               "ORDER BY created_at, id LIMIT ?")
        with self._lock:
            rows = list(self._db.query(sql, [*excluding, limit]))
        return [JobRecord.from_row(r) for r in rows]

    def count_jobs_by_state(self, tenant: str | None = None) -> dict[JobState, int]:
        with self._lock:
            rows = list(self._db.query("SELECT state, COUNT(*) AS n FROM jobs WHERE (? IS NULL OR tenant = ?) "
                                       "GROUP BY state", [tenant, tenant]))
        counts = {state: 0 for state in JobState}
        counts.update({JobState(r["state"]): r["n"] for r in rows})
        return counts

    def transition(self, job_id: str, target: JobState, *, event_type: str, message: str = "",
                   metrics: dict[str, float] | None = None, **fields: Any) -> JobRecord:
        """Moves a job to `target` if the transition table allows it, recording an event.

        Raises FailedPrecondition naming the current state otherwise. The check and the
        update are one statement, so a concurrent transition cannot slip in between.
        """
        allowed = sorted(s.value for s in ALLOWED_FROM[target])
        assignments = {"state": target.value, **_encode_fields(fields)}
        if target.terminal:
            assignments.setdefault("finished_at", time.time())
        set_sql = ", ".join(f"{column} = ?" for column in assignments)
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {set_sql} WHERE id = ? AND state IN ({','.join('?' * len(allowed))}) RETURNING id",
                [*assignments.values(), job_id, *allowed],
            )
            if cursor.fetchone() is None:
                current = list(db.query("SELECT state FROM jobs WHERE id = ?", [job_id]))
                if not current:
                    raise NotFound(f"job {job_id!r} not found")
                raise FailedPrecondition(
                    f"job {job_id} is {current[0]['state']}; it cannot become {target.value}"
                )
            self._insert_event(db, job_id, event_type, message, metrics or {}, target)
        self._notify()
        job = self.get_job(job_id)
        for listener in self._transition_listeners:
            listener(job)
        return job

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Sets plain columns (progress, lease, resolved hyperparameters) without a state change."""
        encoded = _encode_fields(fields)
        set_sql = ", ".join(f"{column} = ?" for column in encoded)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {set_sql} WHERE id = ?", [*encoded.values(), job_id])

    def claim_next_job(self, lease_seconds: float) -> JobRecord | None:
        """Takes the highest-priority, oldest QUEUED job and marks it RUNNING, in one statement."""
        now = time.time()
        with self._transaction() as db:
            rows = list(db.query(
                """
                UPDATE jobs
                   SET state = 'RUNNING', attempt = attempt + 1, worker_pid = NULL,
                       started_at = COALESCE(started_at, :now), lease_expires_at = :lease
                 WHERE id = (SELECT id FROM jobs
                              WHERE state = 'QUEUED' AND (not_before IS NULL OR not_before <= :now)
                              ORDER BY priority DESC, id LIMIT 1)
                RETURNING *
                """,
                {"now": now, "lease": now + lease_seconds},
            ))
            if not rows:
                return None
            job = JobRecord.from_row(rows[0])
            self._insert_event(db, job.id, "job.started", f"attempt {job.attempt} started", {"attempt": job.attempt}, JobState.RUNNING)
        self._notify()
        return job

    def request_cancel(self, job_id: str) -> JobRecord:
        """Cancels a job with no worker at once; asks a running one to stop (CANCELLING)."""
        job = self.get_job(job_id)
        if job.state in (JobState.VALIDATING, JobState.QUEUED, JobState.PAUSED):
            return self.transition(job_id, JobState.CANCELLED, event_type="job.cancelled",
                                   message=f"cancelled while {job.state.value}")
        if job.state is JobState.CANCELLING:
            return job
        return self.transition(job_id, JobState.CANCELLING, event_type="job.cancelling",
                               message="cancel requested; stopping the worker", cancel_requested=1)

    def request_pause(self, job_id: str) -> JobRecord:
        """Holds a queued job at once; asks a running one to checkpoint and stop (PAUSING)."""
        job = self.get_job(job_id)
        if job.state in (JobState.PAUSING, JobState.PAUSED):
            return job
        if job.state is JobState.QUEUED:
            return self.transition(job_id, JobState.PAUSED, event_type="job.paused", message="held before it ran")
        return self.transition(job_id, JobState.PAUSING, event_type="job.pausing",
                               message="pause requested; checkpointing", pause_requested=1)

    def resume(self, job_id: str) -> JobRecord:
        return self.transition(job_id, JobState.QUEUED, event_type="job.resumed",
                               message="resumed; continues from its last checkpoint",
                               pause_requested=0, queued_at=time.time())

    def record_failure(self, job_id: str, code: str, message: str, *, retry_after: float | None) -> JobRecord:
        """Adds the failure to the job's history, then requeues it after `retry_after` seconds
        (None: never) while its failed attempts are fewer than max_attempts, else fails it.

        Only failures count against max_attempts: a server restart is not the job's fault.
        """
        job = self.get_job(job_id)
        history = [*job.error_history, {"attempt": job.attempt, "code": code, "message": message, "at": time.time()}]
        if retry_after is not None and len(history) < job.max_attempts:
            return self.transition(
                job_id, JobState.QUEUED, event_type="job.retrying",
                message=f"attempt {job.attempt} failed ({code}); retrying in {retry_after:.0f}s: {message}",
                error_history=history, not_before=time.time() + retry_after, lease_expires_at=None, worker_pid=None,
            )
        return self.transition(job_id, JobState.FAILED, event_type="job.failed", message=message,
                               error_code=code, error_message=message, error_history=history,
                               lease_expires_at=None)

    def requeue_orphans(self) -> list[str]:
        """Puts jobs left RUNNING/CANCELLING by a previous server process back in order.

        Their workers die with that process (SIGTERM from the kernel, or a broken pipe), so a
        RUNNING job is queued again (it resumes from its last checkpoint), a CANCELLING one
        is CANCELLED and a PAUSING one PAUSED. A VALIDATING one stays so: the new process's
        scheduler validates it again. Returns the ids of the jobs that were RUNNING.
        """
        orphans = self.list_jobs(limit=1_000_000, states=WORKER_STATES)
        for job in orphans:
            self.recover_lost_worker(job, "the server restarted while it ran")
        return [job.id for job in orphans if job.state is JobState.RUNNING]

    def recover_lost_worker(self, job: JobRecord, why: str) -> None:
        """Finishes what a job's vanished worker was asked to do: requeue, pause or cancel."""
        if job.state is JobState.CANCELLING:
            self.transition(job.id, JobState.CANCELLED, event_type="job.cancelled", message=f"cancelled ({why})")
        elif job.state is JobState.PAUSING:
            self.transition(job.id, JobState.PAUSED, event_type="job.paused", message=f"paused ({why})",
                            lease_expires_at=None)
        elif job.state is JobState.RUNNING:
            self.transition(job.id, JobState.QUEUED, event_type="job.requeued", message=f"requeued: {why}",
                            lease_expires_at=None, queued_at=time.time())

    def expired_leases(self, now: float) -> list[JobRecord]:
        """Jobs whose worker has not been heard from within its lease."""
        states = [s.value for s in WORKER_STATES]
        with self._lock:
            rows = list(self._db.query(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))}) AND lease_expires_at < ?",
                [*states, now]))
        return [JobRecord.from_row(r) for r in rows]

    def finished_before(self, cutoff: float) -> list[JobRecord]:
        """Terminal jobs finished before `cutoff` whose files still exist (for retention)."""
        with self._lock:
            rows = list(self._db.query(
                "SELECT * FROM jobs WHERE state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') AND finished_at < ? "
                "AND artifacts_deleted_at IS NULL", [cutoff]))
        return [JobRecord.from_row(r) for r in rows]

    # Tokens -------------------------------------------------------------------------

    def insert_token(self, *, token_sha256: str, tenant: str, role: str, name: str = "") -> TokenRecord:
        record = TokenRecord(id=new_id("tok"), tenant=tenant, role=role, name=name, created_at=time.time(),
                             revoked_at=None)
        with self._transaction() as db:
            db["tokens"].insert({**record.__dict__, "token_sha256": token_sha256})
        return record

    def find_token(self, token_sha256: str) -> TokenRecord | None:
        row = self._one("SELECT * FROM tokens WHERE token_sha256 = ? AND revoked_at IS NULL", [token_sha256])
        return TokenRecord.from_row(row) if row else None

    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        with self._lock:
            rows = list(self._db.query("SELECT * FROM tokens WHERE (? IS NULL OR tenant = ?) ORDER BY id",
                                       [tenant, tenant]))
        return [TokenRecord.from_row(r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenRecord:
        with self._transaction() as db:
            db.execute("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", [time.time(), token_id])
        row = self._one("SELECT * FROM tokens WHERE id = ?", [token_id])
        if row is None:
            raise NotFound(f"token {token_id!r} not found")
        return TokenRecord.from_row(row)

    def count_tokens(self) -> int:
        with self._lock:
            return list(self._db.query("SELECT COUNT(*) AS n FROM tokens"))[0]["n"]

    # Audit --------------------------------------------------------------------------

    def append_audit(self, *, principal: str, tenant: str, action: str, job_id: str | None = None,
                     dataset_id: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Appends one entry to the hash chain (see audit.py) and moves the head, atomically."""
        with self._transaction() as db:
            return self._append_audit(db, principal=principal, tenant=tenant, action=action, job_id=job_id,
                                      dataset_id=dataset_id, details=details)

    @staticmethod
    def _append_audit(db: sqlite_utils.Database, *, principal: str, tenant: str, action: str,
                      job_id: str | None, dataset_id: str | None, details: dict[str, Any] | None) -> dict[str, Any]:
        # Runs inside the caller's transaction: the entry and the head move together.
        head = list(db.query("SELECT seq, entry_hash FROM audit_head WHERE id = 1"))
        seq, prev = (head[0]["seq"] + 1, head[0]["entry_hash"]) if head else (1, audit.GENESIS)
        entry = {"seq": seq, "at": time.time(), "principal": principal, "tenant": tenant, "action": action,
                 "job_id": job_id, "dataset_id": dataset_id,
                 "details": json.dumps(details or {}, sort_keys=True, separators=(",", ":"))}
        entry["prev_hash"] = prev
        entry["content_hash"] = audit.content_hash(entry)
        entry["entry_hash"] = audit.entry_hash(prev, entry["content_hash"])
        db["audit"].insert(entry)
        db.execute("INSERT INTO audit_head (id, seq, entry_hash) VALUES (1, ?, ?) "
                   "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, entry_hash = excluded.entry_hash",
                   [seq, entry["entry_hash"]])
        return entry

    def audit_entries(self, tenant: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._db.query("SELECT * FROM audit WHERE (? IS NULL OR tenant = ?) ORDER BY seq",
                                       [tenant, tenant]))

    def verify_audit(self) -> audit.Verdict:
        with self._lock:
            rows = list(self._db.query("SELECT * FROM audit ORDER BY seq"))
            head = list(self._db.query("SELECT seq, entry_hash FROM audit_head WHERE id = 1"))
        return audit.verify(rows, head[0] if head else None)

    # Events -------------------------------------------------------------------------

    def append_event(self, job_id: str, event_type: str, message: str = "",
                     metrics: dict[str, float] | None = None) -> EventRecord:
        with self._transaction() as db:
            state = JobState(list(db.query("SELECT state FROM jobs WHERE id = ?", [job_id]))[0]["state"])
            event = self._insert_event(db, job_id, event_type, message, metrics or {}, state)
        self._notify()
        return event

    def events_after(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[EventRecord]:
        sql = "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?"
        with self._lock:
            rows = list(self._db.query(sql, [job_id, after_sequence, limit]))
        return [EventRecord.from_row(r) for r in rows]

    def wait_for_events(self, timeout: float) -> None:
        """Blocks until any event is appended, or `timeout` seconds pass."""
        with self._events_changed:
            self._events_changed.wait(timeout)

    def _notify(self) -> None:
        with self._events_changed:
            self._events_changed.notify_all()

    @staticmethod
    def _insert_event(db: sqlite_utils.Database, job_id: str, event_type: str, message: str,
                      metrics: dict[str, float], state: JobState) -> EventRecord:
        row = list(db.query("SELECT COALESCE(MAX(sequence), 0) + 1 AS next FROM events WHERE job_id = ?", [job_id]))
        event = EventRecord(job_id=job_id, sequence=row[0]["next"], type=event_type, message=message,
                            state=state, created_at=time.time(), metrics=dict(metrics))
        db.execute(
            "INSERT INTO events (job_id, sequence, type, message, metrics, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [job_id, event.sequence, event_type, message, json.dumps(metrics), state.value, event.created_at],
        )
        return event

    def integrity_check(self) -> str:
        with self._lock:
            return list(self._db.query("PRAGMA integrity_check"))[0]["integrity_check"]


def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
