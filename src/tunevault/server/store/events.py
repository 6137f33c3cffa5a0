"""Each job's event stream: appending events in order, reading them back, waking the readers."""

from __future__ import annotations

import json
import threading
import time

import sqlite_utils

from tunevault.server.store.db import Connection
from tunevault.server.store.records import EventRecord
from tunevault.server.store.states import JobState


class EventLog:
    """Events per job, numbered 1, 2, ... by `sequence`; WatchJob streams wait on `wait_for_events`."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        # On the connection's lock: a waiter is woken only after the writer's COMMIT.
        self._events_changed = threading.Condition(connection.lock)

    def append_event(self, job_id: str, event_type: str, message: str = "",
                     metrics: dict[str, float] | None = None) -> EventRecord:
        with self._connection.transaction() as db:
            state = JobState(list(db.query("SELECT state FROM jobs WHERE id = ?", [job_id]))[0]["state"])
            event = self.insert_in(db, job_id, event_type, message, metrics or {}, state)
        self.notify()
        return event

    def events_after(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[EventRecord]:
        sql = "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?"
        rows = self._connection.rows(sql, [job_id, after_sequence, limit])
        return [EventRecord.from_row(r) for r in rows]

    def wait_for_events(self, timeout: float) -> None:
        """Blocks until any event is appended, or `timeout` seconds pass."""
        with self._events_changed:
            self._events_changed.wait(timeout)

    def notify(self) -> None:
        """Wakes every `wait_for_events`; call it after the transaction that inserted events committed."""
        with self._events_changed:
            self._events_changed.notify_all()

    @staticmethod
    def insert_in(db: sqlite_utils.Database, job_id: str, event_type: str, message: str,
                  metrics: dict[str, float], state: JobState) -> EventRecord:
        """Inserts the job's next event inside the caller's transaction (so it moves with the job's row)."""
        row = list(db.query("SELECT COALESCE(MAX(sequence), 0) + 1 AS next FROM events WHERE job_id = ?", [job_id]))
        event = EventRecord(job_id=job_id, sequence=row[0]["next"], type=event_type, message=message,
                            state=state, created_at=time.time(), metrics=dict(metrics))
        db.execute(
            "INSERT INTO events (job_id, sequence, type, message, metrics, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [job_id, event.sequence, event_type, message, json.dumps(metrics), state.value, event.created_at],
        )
        return event
