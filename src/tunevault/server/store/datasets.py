"""Datasets' rows: insert, look up (per tenant), list, soft-delete, and a tenant's usage for its quotas."""

from __future__ import annotations

import time

from tunevault.server.errors import FailedPrecondition, NotFound
from tunevault.server.ids import new_id
from tunevault.server.store.db import Connection
from tunevault.server.store.records import DatasetRecord
from tunevault.server.store.states import UNFINISHED_STATES, in_states


class DatasetRepository:
    """The datasets table; its files and data keys are the caller's (api/uploads.py, privacy/sealing)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def insert_dataset(self, *, name: str, sha256: str, row_count: int, size_bytes: int,
                       format: str, path: str, dataset_id: str | None = None, tenant: str = "default",
                       encryption_key_id: str | None = None) -> DatasetRecord:
        record = DatasetRecord(
            id=dataset_id or new_id("ds"), name=name, sha256=sha256, row_count=row_count,
            size_bytes=size_bytes, format=format, path=path, created_at=time.time(), tenant=tenant,
            encryption_key_id=encryption_key_id,
        )
        with self._connection.transaction() as db:
            db["datasets"].insert(record.__dict__)
        return record

    def get_dataset(self, dataset_id: str, tenant: str | None = None) -> DatasetRecord:
        """The dataset; NotFound also when it belongs to another tenant than `tenant` (None: any)."""
        row = self._connection.one("SELECT * FROM datasets WHERE id = ? AND (? IS NULL OR tenant = ?) "
                                   "AND deleted_at IS NULL", [dataset_id, tenant, tenant])
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found")
        return DatasetRecord.from_row(row)

    def delete_dataset(self, dataset_id: str) -> DatasetRecord:
        """Marks the dataset deleted, unless an unfinished job uses it (FailedPrecondition naming them).

        One transaction, so no job can be queued on it between the check and the mark; removing
        the file and destroying its key are the caller's (privacy/sealing/keys.py), after this.
        """
        unfinished, unfinished_values = in_states(UNFINISHED_STATES)
        with self._connection.transaction() as db:
            rows = list(db.query("SELECT * FROM datasets WHERE id = ? AND deleted_at IS NULL", [dataset_id]))
            if not rows:
                raise NotFound(f"dataset {dataset_id!r} not found")
            users = [r["id"] for r in db.query(
                f"SELECT id FROM jobs WHERE (dataset_id = ? OR validation_dataset_id = ?) AND {unfinished} "
                "ORDER BY id LIMIT 5",
                [dataset_id, dataset_id, *unfinished_values])]
            if users:
                raise FailedPrecondition(f"dataset {dataset_id} is used by unfinished job(s) {', '.join(users)}; "
                                         "cancel them or wait for them to finish")
            deleted_at = time.time()
            db.execute("UPDATE datasets SET deleted_at = ? WHERE id = ?", [deleted_at, dataset_id])
        return DatasetRecord.from_row({**rows[0], "deleted_at": deleted_at})

    def list_datasets(self, limit: int, before_id: str | None = None, tenant: str | None = None) -> list[DatasetRecord]:
        sql = ("SELECT * FROM datasets WHERE (? IS NULL OR id < ?) AND (? IS NULL OR tenant = ?) "
               "AND deleted_at IS NULL ORDER BY id DESC LIMIT ?")
        rows = self._connection.rows(sql, [before_id, before_id, tenant, tenant, limit])
        return [DatasetRecord.from_row(r) for r in rows]

    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(bytes of datasets, jobs waiting or running) owned by `tenant`, for its quotas."""
        unfinished, unfinished_values = in_states(UNFINISHED_STATES)
        with self._connection.lock:  # both counts from one snapshot
            stored = self._connection.rows("SELECT COALESCE(SUM(size_bytes), 0) AS n FROM datasets WHERE tenant = ? "
                                           "AND deleted_at IS NULL", [tenant])[0]["n"]
            pending = self._connection.rows(f"SELECT COUNT(*) AS n FROM jobs WHERE tenant = ? AND {unfinished}",
                                            [tenant, *unfinished_values])[0]["n"]
        return int(stored), int(pending)
