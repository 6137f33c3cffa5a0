"""Feedback rows: insert, list per job (newest first), and delete with the job's files.

The texts arrive already sealed (a blob this module never opens): sealing them with the job's data
key is the caller's (tunevault.server.feedback), so the store holds no plaintext of them.
"""

from __future__ import annotations

import time

from tunevault.server.store.db import Connection
from tunevault.server.store.records import FeedbackRecord


class FeedbackRepository:
    """The feedback table, one row per RecordFeedback."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def insert_feedback(self, *, feedback_id: str, job_id: str, tenant: str, rating: int, has_rewrite: bool,
                        sealed: bytes, created_by: str | None) -> FeedbackRecord:
        record = FeedbackRecord(id=feedback_id, job_id=job_id, tenant=tenant, rating=rating,
                                has_rewrite=has_rewrite, sealed=sealed, created_by=created_by, created_at=time.time())
        with self._connection.transaction() as db:
            db["feedback"].insert({**record.__dict__, "has_rewrite": int(has_rewrite)})
        return record

    def list_feedback(self, job_id: str, limit: int | None = None,
                      before_id: str | None = None) -> list[FeedbackRecord]:
        """The job's feedback, newest first; limit None: all of it."""
        rows = self._connection.rows("SELECT * FROM feedback WHERE job_id = ? AND (? IS NULL OR id < ?) "
                                     "ORDER BY id DESC LIMIT ?", [job_id, before_id, before_id, limit or -1])
        return [FeedbackRecord.from_row(r) for r in rows]

    def delete_feedback(self, job_id: str) -> int:
        """Deletes the job's feedback rows (their key is shredded with the job's); returns how many."""
        with self._connection.transaction() as db:
            return db.execute("DELETE FROM feedback WHERE job_id = ?", [job_id]).rowcount
