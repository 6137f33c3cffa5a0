"""Client: a thin, typed wrapper over the tunevault.v1 gRPC API (grpcio + protobuf only)."""

from __future__ import annotations

import difflib
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from tunevault.v1 import tunevault_pb2 as pb
from tunevault.v1 import tunevault_pb2_grpc as pb_grpc

CHUNK_BYTES = 1024 * 1024
DEFAULT_ADDRESS = "127.0.0.1:50051"

# Retries live in the channel's service config, not in code: UNAVAILABLE (server restarting)
# is retried with backoff for every method. CreateJob is safe to retry because the client
# always sends an idempotency key.
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "tunevault.v1.TuneVault"}],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


class Client:
    """One channel to one appliance. Every method raises grpc.RpcError on a failed call."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, *,
                 tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                 tls_server_name: str | None = None, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls_ca.read_bytes() if tls_ca else None,
                private_key=tls_key.read_bytes() if tls_key else None,
                certificate_chain=tls_cert.read_bytes() if tls_cert else None,
            )
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.TuneVaultStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Datasets ------------------------------------------------------------------------

    def upload_dataset(self, path: Path, name: str | None = None, timeout: float | None = None,
                       data_format: str | None = None) -> pb.Dataset:
        """Upload a JSONL, CSV or Parquet file; `data_format` (chat, instruction, completion, text)
        names the row format instead of letting the server detect it."""
        fmt = pb.DATASET_FORMAT_UNSPECIFIED
        if data_format:
            fmt = pb.DatasetFormat.Value(f"DATASET_FORMAT_{data_format.upper()}")

        # Opened before the stream starts: an OSError raised inside the request iterator would
        # reach the caller only as "UNKNOWN: Exception iterating requests!".
        with path.open("rb") as handle:
            def requests() -> Iterator[pb.UploadDatasetRequest]:
                yield pb.UploadDatasetRequest(metadata=pb.DatasetMetadata(name=name or path.name, format=fmt))
                for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                    yield pb.UploadDatasetRequest(chunk=chunk)
            return self._stub.UploadDataset(requests(), metadata=self._metadata, timeout=timeout).dataset

    def get_dataset(self, dataset_id: str) -> pb.Dataset:
        return self._stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id), metadata=self._metadata).dataset

    def list_datasets(self, page_size: int = 0, page_token: str = "") -> pb.ListDatasetsResponse:
        return self._stub.ListDatasets(pb.ListDatasetsRequest(page_size=page_size, page_token=page_token),
                                       metadata=self._metadata)

    # Jobs ----------------------------------------------------------------------------

    def create_job(self, dataset_id: str, base_model: str,
                   hyperparameters: Mapping[str, Any] | pb.Hyperparameters | None = None, *,
                   validation_dataset_id: str = "", idempotency_key: str | None = None,
                   display_name: str = "", priority: int = 0, not_before: float | None = None,
                   max_attempts: int = 0, pii: str = "", gpus: int | None = None, method: str = "") -> pb.Job:
        """Queues a job; `gpus` None leaves the server's default (1 on a GPU box, else the CPU), 0 asks for the CPU."""
        request = pb.CreateJobRequest(
            dataset_id=dataset_id, base_model=base_model, validation_dataset_id=validation_dataset_id,
            hyperparameters=(hyperparameters if isinstance(hyperparameters, pb.Hyperparameters)
                             else hyperparameters_message(hyperparameters or {})),
            idempotency_key=idempotency_key or uuid.uuid4().hex, display_name=display_name,
            priority=priority, max_attempts=max_attempts,
            pii=pb.PiiMode.Value(f"PII_MODE_{pii.upper()}") if pii else pb.PII_MODE_UNSPECIFIED,
            method=pb.TrainingMethod.Value(f"TRAINING_METHOD_{method.upper()}") if method
            else pb.TRAINING_METHOD_UNSPECIFIED,
        )
        if not_before is not None:
            request.not_before.FromNanoseconds(int(not_before * 1e9))
        if gpus is not None:
            request.gpus = gpus
        return self._stub.CreateJob(request, metadata=self._metadata).job

    def get_job(self, job_id: str) -> pb.Job:
        return self._stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self._metadata).job

    def list_jobs(self, states: list[int] | None = None, page_size: int = 0, page_token: str = "") -> pb.ListJobsResponse:
        request = pb.ListJobsRequest(states=states or [], page_size=page_size, page_token=page_token)
        return self._stub.ListJobs(request, metadata=self._metadata)

    def cancel_job(self, job_id: str) -> pb.Job:
        return self._stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=self._metadata).job

    def pause_job(self, job_id: str) -> pb.Job:
        return self._stub.PauseJob(pb.PauseJobRequest(job_id=job_id), metadata=self._metadata).job

    def resume_job(self, job_id: str) -> pb.Job:
        return self._stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), metadata=self._metadata).job

    def delete_job(self, job_id: str) -> pb.DeleteJobResponse:
        return self._stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), metadata=self._metadata)

    def delete_dataset(self, dataset_id: str) -> pb.DeleteDatasetResponse:
        """Removes the dataset's file and destroys its data key; FAILED_PRECONDITION while a job needs it."""
        return self._stub.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=dataset_id), metadata=self._metadata)

    def list_checkpoints(self, job_id: str) -> list[pb.Checkpoint]:
        return list(self._stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id),
                                               metadata=self._metadata).checkpoints)

    def get_status(self) -> pb.GetStatusResponse:
        return self._stub.GetStatus(pb.GetStatusRequest(), metadata=self._metadata)

    def create_token(self, tenant: str, role: str, name: str = "") -> pb.CreateTokenResponse:
        request = pb.CreateTokenRequest(tenant=tenant, role=pb.Role.Value(f"ROLE_{role.upper()}"), name=name)
        return self._stub.CreateToken(request, metadata=self._metadata)

    def list_tokens(self, tenant: str = "") -> list[pb.Token]:
        return list(self._stub.ListTokens(pb.ListTokensRequest(tenant=tenant), metadata=self._metadata).tokens)

    def revoke_token(self, token_id: str) -> pb.Token:
        return self._stub.RevokeToken(pb.RevokeTokenRequest(token_id=token_id), metadata=self._metadata).token

    def stream_events(self, job_id: str, after_sequence: int = 0, follow: bool = True) -> Iterator[pb.JobEvent]:
        request = pb.StreamJobEventsRequest(job_id=job_id, after_sequence=after_sequence, no_follow=not follow)
        return self._stub.StreamJobEvents(request, metadata=self._metadata)

    # Models, artifacts, generation ---------------------------------------------------

    def list_models(self) -> list[pb.Model]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), metadata=self._metadata).models)

    def download_artifact(self, job_id: str, destination: Path) -> Path:
        """Writes the adapter archive to `destination` (a file, or a folder to put it in).

        The SHA-256 the server announced is checked before the file gets its final name.
        """
        stream = self._stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id), metadata=self._metadata)
        digest, expected, target, temporary, handle = hashlib.sha256(), "", destination, None, None
        try:
            for message in stream:
                if handle is None:
                    expected = message.sha256
                    target = destination / message.filename if destination.is_dir() else destination
                    temporary = target.with_name(target.name + ".part")
                    handle = temporary.open("wb")
                digest.update(message.chunk)
                handle.write(message.chunk)
        finally:
            if handle is not None:
                handle.close()
        if temporary is None:
            raise RuntimeError(f"the server sent no bytes for job {job_id}")
        if expected and digest.hexdigest() != expected:
            temporary.unlink(missing_ok=True)
            raise RuntimeError(f"download of {job_id} is corrupt: sha256 {digest.hexdigest()} != {expected}")
        temporary.replace(target)
        return target

    def generate(self, prompt: str, *, timeout: float | None = 600, **options: Any) -> pb.GenerateResponse:
        """One whole completion. options: job_id or base_model, max_tokens, temperature, top_p, stop,
        system, history (earlier (user, assistant) exchanges, oldest first), raw, seed."""
        return self._stub.Generate(_generate_request(prompt, **options), metadata=self._metadata, timeout=timeout)

    def generate_stream(self, prompt: str, *, timeout: float | None = 600,
                        **options: Any) -> Iterator[pb.GenerateStreamResponse]:
        """The completion as it is generated: pieces of text, the last message with the counts."""
        return self._stub.GenerateStream(_generate_request(prompt, **options), metadata=self._metadata,
                                         timeout=timeout)

    # Feedback ------------------------------------------------------------------------

    def record_feedback(self, job_id: str, prompt: str, completion: str, *, rating: int = 0,
                        preferred_completion: str = "", system: str = "",
                        history: list[tuple[str, str]] | None = None) -> pb.Feedback:
        """Rates a job's answer (1 good, -1 bad, 0 none) and/or gives a better one; history as in generate()."""
        request = pb.RecordFeedbackRequest(job_id=job_id, prompt=prompt, completion=completion, rating=rating,
                                           preferred_completion=preferred_completion, system=system,
                                           history=_turns(history))
        return self._stub.RecordFeedback(request, metadata=self._metadata).feedback

    def list_feedback(self, job_id: str, page_size: int = 0, page_token: str = "") -> pb.ListFeedbackResponse:
        request = pb.ListFeedbackRequest(job_id=job_id, page_size=page_size, page_token=page_token)
        return self._stub.ListFeedback(request, metadata=self._metadata)

    def export_feedback(self, job_id: str, name: str = "") -> pb.ExportFeedbackResponse:
        """Makes a preference dataset (OpenAI DPO rows) of the job's feedback; FAILED_PRECONDITION without pairs."""
        return self._stub.ExportFeedback(pb.ExportFeedbackRequest(job_id=job_id, name=name), metadata=self._metadata)

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The grpc.health.v1 status name, e.g. "SERVING" (imported lazily: health is optional)."""
        request = _health_request(service)
        method = self._channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=lambda r: r,
                                           response_deserializer=_health_status_name)
        return method(request, timeout=timeout)


def _turns(history: list[tuple[str, str]] | None) -> list[pb.ChatTurn]:
    return [pb.ChatTurn(role=role, content=text)
            for user, assistant in history or [] for role, text in (("user", user), ("assistant", assistant))]


def _generate_request(prompt: str, *, job_id: str = "", base_model: str = "", max_tokens: int = 0,
                      temperature: float = 0.0, top_p: float = 0.0, stop: list[str] | None = None, system: str = "",
                      history: list[tuple[str, str]] | None = None, raw: bool = False,
                      seed: int | None = None) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=prompt, job_id=job_id, base_model=base_model, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, stop=stop or [], system=system, history=_turns(history),
                              raw=raw, seed=seed)


def _health_request(service: str) -> bytes:
    # grpc.health.v1.HealthCheckRequest is {string service = 1}; encoded by hand so the thin
    # client does not need the grpcio-health-checking package.
    encoded = service.encode()
    return (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""


def _health_status_name(data: bytes) -> str:
    names = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
    return names.get(data[1], "UNKNOWN") if len(data) >= 2 and data[0] == 0x08 else "UNKNOWN"


class HyperparameterValueError(ValueError):
    """A hyperparameter the message cannot hold; `reason` says why without repeating the name."""

    def __init__(self, name: str, value: Any, reason: str) -> None:
        super().__init__(f"hyperparameter {name}={value!r}: {reason}")
        self.name, self.value, self.reason = name, value, reason


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown hyperparameter (did you mean {close[0]}?)" if close else \
        f"unknown hyperparameter (known: {', '.join(known)})"


def _convert(field: Any, value: Any) -> Any:
    """One value as the field's type; ValueError with the reason a person needs."""
    if field.type in (field.TYPE_INT32, field.TYPE_INT64):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("not a whole number")
        try:
            number = int(value) if not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise ValueError("not a whole number") from None
        bits = 31 if field.type == field.TYPE_INT32 else 63
        if not -(2**bits) <= number < 2**bits:
            raise ValueError("out of range")
        return number
    if field.type == field.TYPE_DOUBLE:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("not a number") from None
    if field.type == field.TYPE_BOOL:
        return _switch(value)
    return str(value)


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise ValueError("must be true or false")


def hyperparameters_message(values: Mapping[str, Any]) -> pb.Hyperparameters:
    """Builds the message from a mapping, converting "2e-4"-style strings by the field's type.

    Raises HyperparameterValueError naming the key for an unknown key or a value of the wrong
    type; ranges are the server's to check (it owns the rules).
    """
    message = pb.Hyperparameters()
    fields = pb.Hyperparameters.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        if name not in fields:
            raise HyperparameterValueError(name, value, _unknown(name, sorted(fields)))
        field = fields[name]
        try:
            if field.is_repeated:  # a list, or "a,b,c" from the command line
                items = value.split(",") if isinstance(value, str) else \
                    list(value) if isinstance(value, (list, tuple)) else [value]
                getattr(message, name).extend(_convert(field, str(i).strip()) for i in items if str(i).strip())
            else:
                setattr(message, name, _convert(field, value))
        except ValueError as error:
            raise HyperparameterValueError(name, value, str(error)) from None
    return message
