"""Store records and plain dicts to protobuf messages and back: the edge of the API."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from tunevault.server.errors import InvalidArgument
from tunevault.server.feedback import FeedbackTexts
from tunevault.server.store import DatasetRecord, EventRecord, FeedbackRecord, JobRecord, JobState, TokenRecord
from tunevault.v1 import tunevault_pb2 as pb

_LIST_HYPERPARAMETERS = [f.name for f in pb.Hyperparameters.DESCRIPTOR.fields if f.is_repeated]
_SCALAR_HYPERPARAMETERS = [f.name for f in pb.Hyperparameters.DESCRIPTOR.fields if f.name not in _LIST_HYPERPARAMETERS]

# The row format stored with a dataset -> its enum ("chat_jsonl": datasets uploaded before formats).
DATASET_FORMATS = {
    "chat_jsonl": pb.DATASET_FORMAT_CHAT, "chat": pb.DATASET_FORMAT_CHAT,
    "instruction": pb.DATASET_FORMAT_INSTRUCTION, "completion": pb.DATASET_FORMAT_COMPLETION,
    "text": pb.DATASET_FORMAT_TEXT,
}


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    value = Timestamp()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def hyperparameters_to_dict(message: pb.Hyperparameters) -> dict[str, Any]:
    """Only the fields the client set: an unset field stays "auto"."""
    values: dict[str, Any] = {name: getattr(message, name) for name in _SCALAR_HYPERPARAMETERS if message.HasField(name)}
    for name in _LIST_HYPERPARAMETERS:  # an empty list is "unset" too
        if getattr(message, name):
            values[name] = list(getattr(message, name))
    return values


def hyperparameters_to_proto(values: dict[str, Any]) -> pb.Hyperparameters:
    message = pb.Hyperparameters()
    for name, value in values.items():
        if value is None:
            continue
        if name in _LIST_HYPERPARAMETERS:
            getattr(message, name).extend(value)
        elif name in _SCALAR_HYPERPARAMETERS:
            field = pb.Hyperparameters.DESCRIPTOR.fields_by_name[name]
            integral = field.type in (field.TYPE_INT32, field.TYPE_INT64)
            setattr(message, name, int(value) if integral else value)
    return message


def job_state_to_proto(state: JobState) -> int:
    return pb.JobState.Value(f"JOB_STATE_{state.value}")


def job_state_from_proto(value: int) -> JobState:
    if value not in pb.JobState.values() or value == pb.JOB_STATE_UNSPECIFIED:
        raise InvalidArgument("states", f"unknown job state {value}")
    return JobState(pb.JobState.Name(value).removeprefix("JOB_STATE_"))


def dataset_to_proto(record: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        id=record.id, name=record.name, sha256=record.sha256, row_count=record.row_count,
        size_bytes=record.size_bytes, format=DATASET_FORMATS.get(record.format, pb.DATASET_FORMAT_UNSPECIFIED), created_at=timestamp(record.created_at),
        encryption_key_id=record.encryption_key_id or "",
    )


def job_to_proto(job: JobRecord, disk_usage_bytes: int = 0, encryption_key_id: str | None = None,
                 default_gpus: int = 0) -> pb.Job:
    message = pb.Job(
        id=job.id, state=job_state_to_proto(job.state), dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id or "", base_model=job.base_model,
        hyperparameters=hyperparameters_to_proto(job.resolved_hyperparameters or job.hyperparameters),
        idempotency_key=job.idempotency_key or "", display_name=job.display_name,
        created_at=timestamp(job.created_at), started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at), trained_tokens=job.trained_tokens, step=job.step,
        total_steps=job.total_steps, attempt=job.attempt, priority=job.priority,
        not_before=timestamp(job.not_before), max_attempts=job.max_attempts, queued_at=timestamp(job.queued_at),
        disk_usage_bytes=disk_usage_bytes, artifacts_deleted=job.artifacts_deleted_at is not None,
        pii=pb.PiiMode.Value(f"PII_MODE_{job.pii_mode.upper()}"), tenant=job.tenant,
        encryption_key_id=encryption_key_id or "",
        gpus=default_gpus if job.gpus is None else job.gpus, devices=job.devices,
        method=pb.TrainingMethod.Value(f"TRAINING_METHOD_{job.method.upper()}"),
        error_history=[pb.JobError(code=e["code"], message=e["message"], attempt=e["attempt"], at=timestamp(e["at"]))
                       for e in job.error_history],
    )
    if job.error_code:
        message.error.CopyFrom(pb.JobError(code=job.error_code, message=job.error_message or "", attempt=job.attempt,
                                           at=timestamp(job.finished_at)))
    if job.result:
        message.result.CopyFrom(pb.JobResult(
            adapter_path=job.result.get("adapter_path", ""), metrics=job.result.get("metrics", {}),
            artifact_size_bytes=int(job.result.get("artifact_size_bytes", 0)),
            adapter_sha256=job.result.get("adapter_sha256", ""),
        ))
    return message


def gpu_slots(box: tuple[int, ...], held: dict[int, JobRecord], scope: str | None) -> list[pb.GpuSlot]:
    """Each GPU and its job; another tenant's job shows as busy without its id (ids do not leak)."""
    slots = []
    for index in box:
        job = held.get(index)
        visible = job is not None and (scope is None or job.tenant == scope)
        slots.append(pb.GpuSlot(index=index, busy=job is not None, job_id=job.id if visible else ""))
    return slots


def event_to_proto(event: EventRecord) -> pb.JobEvent:
    return pb.JobEvent(
        sequence=event.sequence, job_id=event.job_id, type=event.type, message=event.message,
        metrics=event.metrics, created_at=timestamp(event.created_at), state=job_state_to_proto(event.state),
    )


def token_to_proto(record: TokenRecord) -> pb.Token:
    return pb.Token(id=record.id, tenant=record.tenant, role=pb.Role.Value(f"ROLE_{record.role.upper()}"),
                    name=record.name, created_at=timestamp(record.created_at), revoked_at=timestamp(record.revoked_at))


def feedback_to_proto(record: FeedbackRecord, texts: FeedbackTexts) -> pb.Feedback:
    return pb.Feedback(
        id=record.id, job_id=record.job_id, created_at=timestamp(record.created_at), rating=record.rating,
        has_rewrite=record.has_rewrite, prompt=texts.prompt, system=texts.system,
        history=[pb.ChatTurn(role=role, content=content) for role, content in texts.history],
        completion=texts.completion, preferred_completion=texts.preferred_completion,
        created_by=record.created_by or "",
    )
