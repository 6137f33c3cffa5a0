"""The audit log's rows: appending an entry and moving the chain's head together, reading, verifying.

How an entry is hashed and how the chain is checked is audit.py's (pure functions over rows,
shared with `tunevault audit verify`); this module only stores and loads.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlite_utils

from tunevault.server.store import audit
from tunevault.server.store.db import Connection


class AuditLog:
    """The tables audit (one row per entry) and audit_head (the last seq and entry hash)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def append_audit(self, *, principal: str, tenant: str, action: str, job_id: str | None = None,
                     dataset_id: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Appends one entry to the hash chain (see audit.py) and moves the head, atomically."""
        with self._connection.transaction() as db:
            return self.append_in(db, principal=principal, tenant=tenant, action=action, job_id=job_id,
                                  dataset_id=dataset_id, details=details)

    @staticmethod
    def append_in(db: sqlite_utils.Database, *, principal: str, tenant: str, action: str,
                  job_id: str | None, dataset_id: str | None, details: dict[str, Any] | None) -> dict[str, Any]:
        """Appends an entry inside the caller's transaction: the entry and the head move together."""
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
        return self._connection.rows("SELECT * FROM audit WHERE (? IS NULL OR tenant = ?) ORDER BY seq", [tenant, tenant])

    def verify_audit(self) -> audit.Verdict:
        with self._connection.lock:  # entries and head from one snapshot
            rows = self._connection.rows("SELECT * FROM audit ORDER BY seq")
            head = self._connection.rows("SELECT seq, entry_hash FROM audit_head WHERE id = 1")
        return audit.verify(rows, head[0] if head else None)
