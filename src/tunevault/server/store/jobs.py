"""Jobs' rows: create (idempotent), read, list, move through the state table, claim, recover.

Every state change goes through `transition`, which checks ALLOWED_FROM (states.py) in the
same UPDATE that makes it, records the event, and tells the listeners (metrics, audit).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from tunevault.server.errors import FailedPrecondition, NotFound
from tunevault.server.ids import new_id
from tunevault.server.store import placement
from tunevault.server.store.audit_log import AuditLog
from tunevault.server.store.db import Connection
from tunevault.server.store.events import EventLog
from tunevault.server.store.records import JobRecord
from tunevault.server.store.states import ALLOWED_FROM, TERMINAL_STATES, WORKER_STATES, JobState, in_states


class JobRepository:
    """The jobs table. A job's events and its CreateJob audit entry are written in the job's own
    transaction, so the events and audit repositories are passed in."""

    def __init__(self, connection: Connection, events: EventLog, audit: AuditLog) -> None:
        self._connection = connection
        self._events = events
        self._audit = audit
        self._transition_listeners: list[Callable[[JobRecord], None]] = []

    def on_transition(self, listener: Callable[[JobRecord], None]) -> None:
        """Calls `listener(job)` after every state change, wherever it came from (API or scheduler)."""
        self._transition_listeners.append(listener)

    def create_job(self, *, dataset_id: str, validation_dataset_id: str | None, base_model: str,
                   hyperparameters: dict[str, Any], idempotency_key: str | None,
                   display_name: str = "", priority: int = 0, max_attempts: int = 3,
                   not_before: float | None = None, tenant: str = "default",
                   created_by: str | None = None, pii_mode: str = "off", method: str = "sft",
                   queue: bool = False, audit_details: dict[str, Any] | None = None,
                   gpus: int | None = None) -> tuple[JobRecord, bool]:
        """Inserts a VALIDATING job, or returns the job already made with this idempotency key.

        The lookup and the insert share one transaction, so two racing retries of the same
        request cannot both insert. With `queue`, the job skips validation and is moved to
        QUEUED at once (stores and tests that need no validation step); with `audit_details`
        it is audited in that same transaction: one fsync per CreateJob instead of two.
        """
        with self._connection.transaction() as db:
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
                "pii_mode": pii_mode, "gpus": gpus, "method": method,
            })
            self._events.insert_in(db, job_id, "job.created", "job created", {}, JobState.VALIDATING)
            if queue:
                db.execute("UPDATE jobs SET state = ?, queued_at = ? WHERE id = ?", [JobState.QUEUED.value, now, job_id])
                self._events.insert_in(db, job_id, "job.queued", "queued", {}, JobState.QUEUED)
            if audit_details is not None:
                self._audit.append_in(db, principal=created_by or "system", tenant=tenant, action="CreateJob",
                                      job_id=job_id, dataset_id=dataset_id, details=audit_details)
        self._events.notify()
        return self.get_job(job_id), True

    def get_job(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job; NotFound also when it belongs to another tenant than `tenant` (None: any)."""
        row = self._connection.one("SELECT * FROM jobs WHERE id = ? AND (? IS NULL OR tenant = ?)", [job_id, tenant, tenant])
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        return JobRecord.from_row(row)

    def list_jobs(self, limit: int, states: Collection[JobState] = (),
                  before_id: str | None = None, tenant: str | None = None) -> list[JobRecord]:
        """Newest first; `states` empty means any state."""
        clauses, params = ["(? IS NULL OR id < ?)", "(? IS NULL OR tenant = ?)"], [before_id, before_id, tenant, tenant]
        if states:
            in_wanted, wanted = in_states(states)
            clauses.append(in_wanted)
            params.extend(wanted)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"
        rows = self._connection.rows(sql, [*params, limit])
        return [JobRecord.from_row(r) for r in rows]

    def oldest_validating_jobs(self, limit: int, excluding: Sequence[str] = ()) -> list[JobRecord]:
        """VALIDATING jobs in the order they were created, for the validation step to take in turn."""
        sql = (f"SELECT * FROM jobs WHERE state = ? AND id NOT IN ({','.join('?' * len(excluding))}) "
               "ORDER BY created_at, id LIMIT ?")
        rows = self._connection.rows(sql, [JobState.VALIDATING.value, *excluding, limit])
        return [JobRecord.from_row(r) for r in rows]

    def count_jobs_by_state(self, tenant: str | None = None) -> dict[JobState, int]:
        rows = self._connection.rows("SELECT state, COUNT(*) AS n FROM jobs WHERE (? IS NULL OR tenant = ?) "
                                     "GROUP BY state", [tenant, tenant])
        counts = {state: 0 for state in JobState}
        counts.update({JobState(r["state"]): r["n"] for r in rows})
        return counts

    def transition(self, job_id: str, target: JobState, *, event_type: str, message: str = "",
                   metrics: dict[str, float] | None = None, **fields: Any) -> JobRecord:
        """Moves a job to `target` if the transition table allows it, recording an event.

        Raises FailedPrecondition naming the current state otherwise. The check and the
        update are one statement, so a concurrent transition cannot slip in between.
        """
        in_allowed, allowed = in_states(ALLOWED_FROM[target])
        assignments = {"state": target.value, **_encode_fields(fields)}
        if target not in WORKER_STATES:
            # No worker may be alive for it any more, so its devices go back (finished, paused, requeued).
            assignments["devices"] = None
        if target.terminal:
            assignments.setdefault("finished_at", time.time())
        set_sql = ", ".join(f"{column} = ?" for column in assignments)
        with self._connection.transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {set_sql} WHERE id = ? AND {in_allowed} RETURNING id",
                [*assignments.values(), job_id, *allowed],
            )
            if cursor.fetchone() is None:
                current = list(db.query("SELECT state FROM jobs WHERE id = ?", [job_id]))
                if not current:
                    raise NotFound(f"job {job_id!r} not found")
                raise FailedPrecondition(
                    f"job {job_id} is {current[0]['state']}; it cannot become {target.value}"
                )
            self._events.insert_in(db, job_id, event_type, message, metrics or {}, target)
        self._events.notify()
        job = self.get_job(job_id)
        for listener in self._transition_listeners:
            listener(job)
        return job

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Sets plain columns (progress, lease, resolved hyperparameters) without a state change."""
        encoded = _encode_fields(fields)
        set_sql = ", ".join(f"{column} = ?" for column in encoded)
        with self._connection.transaction() as db:
            db.execute(f"UPDATE jobs SET {set_sql} WHERE id = ?", [*encoded.values(), job_id])

    def claim_next_job(self, lease_seconds: float, box: Sequence[int] = ()) -> JobRecord | None:
        """Marks the queue's head job RUNNING on the devices it needs, if they are free (placement.py).

        `box` is the device indexes the scheduler may hand out (empty: a CPU box). The look at the
        held devices and the update share one BEGIN IMMEDIATE transaction, so two claims can never
        take the same device. Returns None when the queue is empty or its head must wait.
        """
        now = time.time()
        with self._connection.transaction() as db:
            head = self._queue_head(db, now, box)
            if head is None:
                return None
            count = placement.needed(head["gpus"], box)
            devices = placement.pick(box, self._held_devices(db), count)
            if devices is None:
                return None  # the head waits for its devices; nothing overtakes it
            rows = list(db.query(
                """
                UPDATE jobs
                   SET state = :running, attempt = attempt + 1, worker_pid = NULL,
                       started_at = COALESCE(started_at, :now), lease_expires_at = :lease,
                       gpus = :gpus, devices = :devices
                 WHERE id = :id AND state = :queued
                RETURNING *
                """,
                {"now": now, "lease": now + lease_seconds, "gpus": count, "devices": json.dumps(list(devices)),
                 "id": head["id"], "running": JobState.RUNNING.value, "queued": JobState.QUEUED.value},
            ))
            job = JobRecord.from_row(rows[0])
            where = f" on GPU {','.join(map(str, devices))}" if devices else ""
            self._events.insert_in(db, job.id, "job.started", f"attempt {job.attempt} started{where}",
                                   {"attempt": job.attempt, "gpus": count}, JobState.RUNNING)
        self._events.notify()
        return job

    @staticmethod
    def _queue_head(db: Any, now: float, box: Sequence[int]) -> dict[str, Any] | None:
        """The first QUEUED job that is due and could ever fit on `box`."""
        rows = list(db.query(
            """
            SELECT id, gpus FROM jobs
             WHERE state = :queued AND (not_before IS NULL OR not_before <= :now)
               AND COALESCE(gpus, :default) <= :total
             ORDER BY priority DESC, id LIMIT 1
            """,
            {"queued": JobState.QUEUED.value, "now": now, "default": placement.default_gpus(box), "total": len(box)},
        ))
        return rows[0] if rows else None

    @staticmethod
    def _held_devices(db: Any) -> list[int]:
        in_worker, worker = in_states(WORKER_STATES)
        rows = db.query(f"SELECT devices FROM jobs WHERE {in_worker} AND devices IS NOT NULL", worker)
        return [device for row in rows for device in json.loads(row["devices"])]

    def held_devices(self) -> dict[int, JobRecord]:
        """Device index -> the job whose worker holds it (for GetStatus and the GPU gauge)."""
        in_worker, worker = in_states(WORKER_STATES)
        rows = self._connection.rows(f"SELECT * FROM jobs WHERE {in_worker} AND devices IS NOT NULL", worker)
        jobs = [JobRecord.from_row(r) for r in rows]
        return {device: job for job in jobs for device in job.devices}

    def too_big_for(self, box: Sequence[int]) -> list[JobRecord]:
        """QUEUED jobs needing more devices than `box` has: they could never start."""
        rows = self._connection.rows("SELECT * FROM jobs WHERE state = ? AND COALESCE(gpus, ?) > ?",
                                     [JobState.QUEUED.value, placement.default_gpus(box), len(box)])
        return [JobRecord.from_row(r) for r in rows]

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
        in_worker, worker = in_states(WORKER_STATES)
        rows = self._connection.rows(f"SELECT * FROM jobs WHERE {in_worker} AND lease_expires_at < ?", [*worker, now])
        return [JobRecord.from_row(r) for r in rows]

    def finished_before(self, cutoff: float) -> list[JobRecord]:
        """Terminal jobs finished before `cutoff` whose files still exist (for retention)."""
        in_terminal, terminal = in_states(TERMINAL_STATES)
        rows = self._connection.rows(f"SELECT * FROM jobs WHERE {in_terminal} AND finished_at < ? "
                                     "AND artifacts_deleted_at IS NULL", [*terminal, cutoff])
        return [JobRecord.from_row(r) for r in rows]


def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
