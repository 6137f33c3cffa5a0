"""Rows of the store as frozen dataclasses, built from database rows in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunevault.server.store.states import JobState


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    name: str
    sha256: str
    row_count: int
    size_bytes: int
    format: str
    path: str
    created_at: float
    tenant: str
    encryption_key_id: str | None = None  # the data key its file is sealed with (None: stored before encryption)
    deleted_at: float | None = None  # DeleteDataset: file removed and key destroyed

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "DatasetRecord":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass(frozen=True)
class JobRecord:
    id: str
    state: JobState
    dataset_id: str
    validation_dataset_id: str | None
    base_model: str
    hyperparameters: dict[str, Any]
    resolved_hyperparameters: dict[str, Any] | None
    idempotency_key: str | None
    display_name: str
    priority: int
    attempt: int
    max_attempts: int
    cancel_requested: bool
    step: int
    total_steps: int
    trained_tokens: int
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None
    lease_expires_at: float | None
    created_at: float
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    not_before: float | None
    error_history: list[dict[str, Any]]
    pause_requested: bool
    artifacts_deleted_at: float | None
    worker_pid: int | None
    tenant: str
    created_by: str | None
    pii_mode: str
    method: str  # sft | dpo | orpo
    gpus: int | None = None  # GPUs it needs at once; None: the box's default (1 with GPUs, else 0)
    devices: tuple[int, ...] = ()  # device indexes its worker holds now

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "JobRecord":
        values = {k: row[k] for k in cls.__dataclass_fields__}
        values["devices"] = tuple(json.loads(row["devices"])) if row["devices"] else ()
        values["state"] = JobState(row["state"])
        values["cancel_requested"] = bool(row["cancel_requested"])
        values["pause_requested"] = bool(row["pause_requested"])
        for key in ("hyperparameters", "resolved_hyperparameters", "result", "error_history"):
            values[key] = json.loads(row[key]) if row[key] is not None else None
        return cls(**values)


@dataclass(frozen=True)
class EventRecord:
    job_id: str
    sequence: int
    type: str
    message: str
    state: JobState
    created_at: float
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EventRecord":
        return cls(
            job_id=row["job_id"],
            sequence=row["sequence"],
            type=row["type"],
            message=row["message"],
            state=JobState(row["state"]),
            created_at=row["created_at"],
            metrics=json.loads(row["metrics"]),
        )


@dataclass(frozen=True)
class TokenRecord:
    id: str
    tenant: str
    role: str
    name: str
    created_at: float
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "TokenRecord":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class FeedbackRecord:
    id: str
    job_id: str
    tenant: str
    rating: int  # 1 good, -1 bad, 0 none
    has_rewrite: bool
    sealed: bytes = field(repr=False)  # the texts, sealed with the job's data key (never plaintext here)
    created_by: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "FeedbackRecord":
        values = {k: row[k] for k in cls.__dataclass_fields__}
        values["has_rewrite"] = bool(row["has_rewrite"])
        return cls(**values)
