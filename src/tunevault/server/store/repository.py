"""The Store: the one object through which the server reads and writes its database.

It owns the connection and its lock (db.Connection) and hands them to one repository per
aggregate: datasets.py, jobs.py, tokens.py, audit_log.py, events.py, feedback.py. Callers see only the
Store's methods; each is the repository's own method, so its signature and docstring are
written once, there.
"""

from __future__ import annotations

from pathlib import Path

from tunevault.server.store.audit_log import AuditLog
from tunevault.server.store.datasets import DatasetRepository
from tunevault.server.store.db import Connection
from tunevault.server.store.events import EventLog
from tunevault.server.store.feedback import FeedbackRepository
from tunevault.server.store.jobs import JobRepository
from tunevault.server.store.tokens import TokenRepository


class Store:
    """One connection, one writer at a time (a lock), explicit BEGIN IMMEDIATE transactions."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._connection = Connection(self.path)  # opens and migrates: the server's Store comes first
        events = EventLog(self._connection)
        audit = AuditLog(self._connection)
        datasets = DatasetRepository(self._connection)
        # A job's events and its CreateJob audit entry share the job's transaction.
        jobs = JobRepository(self._connection, events, audit)
        tokens = TokenRepository(self._connection)
        feedback = FeedbackRepository(self._connection)

        self.insert_dataset = datasets.insert_dataset
        self.get_dataset = datasets.get_dataset
        self.delete_dataset = datasets.delete_dataset
        self.list_datasets = datasets.list_datasets
        self.tenant_usage = datasets.tenant_usage

        self.on_transition = jobs.on_transition
        self.create_job = jobs.create_job
        self.get_job = jobs.get_job
        self.list_jobs = jobs.list_jobs
        self.oldest_validating_jobs = jobs.oldest_validating_jobs
        self.count_jobs_by_state = jobs.count_jobs_by_state
        self.transition = jobs.transition
        self.update_job = jobs.update_job
        self.claim_next_job = jobs.claim_next_job
        self.held_devices = jobs.held_devices
        self.too_big_for = jobs.too_big_for
        self.request_cancel = jobs.request_cancel
        self.request_pause = jobs.request_pause
        self.resume = jobs.resume
        self.record_failure = jobs.record_failure
        self.requeue_orphans = jobs.requeue_orphans
        self.recover_lost_worker = jobs.recover_lost_worker
        self.expired_leases = jobs.expired_leases
        self.finished_before = jobs.finished_before

        self.insert_token = tokens.insert_token
        self.find_token = tokens.find_token
        self.list_tokens = tokens.list_tokens
        self.revoke_token = tokens.revoke_token
        self.count_tokens = tokens.count_tokens

        self.insert_feedback = feedback.insert_feedback
        self.list_feedback = feedback.list_feedback
        self.delete_feedback = feedback.delete_feedback

        self.append_audit = audit.append_audit
        self.audit_entries = audit.audit_entries
        self.verify_audit = audit.verify_audit

        self.append_event = events.append_event
        self.events_after = events.events_after
        self.wait_for_events = events.wait_for_events

    def integrity_check(self) -> str:
        """SQLite's own check of the whole file: "ok", or what is broken."""
        return self._connection.rows("PRAGMA integrity_check")[0]["integrity_check"]

    def close(self) -> None:
        self._connection.close()
