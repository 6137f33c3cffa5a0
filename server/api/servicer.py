"""The TuneVault gRPC service: validate each request, then hand it to the store or scheduler."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc

from tunevault.server import hyperparameters as hp
from tunevault.server.api import convert, pagination
from tunevault.server.api.uploads import receive_dataset
from tunevault.server.artifacts import ARCHIVE_NAME, read_chunks, sha256_of
from tunevault.server.config import ServerConfig
from tunevault.server.errors import FailedPrecondition, InvalidArgument, NotFound
from tunevault.server.inference_client import InferenceProcess
from tunevault.server.model_store import find_model, list_models
from tunevault.server.scheduler.scheduler import Scheduler
from tunevault.server.store import JobRecord, JobState, Store
from tunevault.v1 import tunevault_pb2 as pb
from tunevault.v1 import tunevault_pb2_grpc as pb_grpc

MAX_LABEL_CHARS = 200
MAX_PROMPT_CHARS = 32_000
MAX_NEW_TOKENS = 4096
MAX_STOP_SEQUENCES = 8
EVENT_WAIT_SECONDS = 1.0


def _bounded(field: str, value: str, limit: int = MAX_LABEL_CHARS) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")
    return value


def _id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    return _bounded(field, value, 64)


class TuneVaultServicer(pb_grpc.TuneVaultServicer):
    def __init__(self, config: ServerConfig, store: Store, scheduler: Scheduler, inference: InferenceProcess) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.inference = inference

    # Datasets ------------------------------------------------------------------------

    def UploadDataset(self, request_iterator, context):
        record = receive_dataset(request_iterator, self.store, self.config.data_dir, self.config.max_upload_bytes)
        return pb.UploadDatasetResponse(dataset=convert.dataset_to_proto(record))

    def GetDataset(self, request, context):
        return pb.GetDatasetResponse(dataset=convert.dataset_to_proto(self.store.get_dataset(_id("dataset_id", request.dataset_id))))

    def ListDatasets(self, request, context):
        size = pagination.page_size(request.page_size)
        records = self.store.list_datasets(size + 1, before_id=pagination.decode(request.page_token))
        token = pagination.encode(records[size - 1].id) if len(records) > size else ""
        return pb.ListDatasetsResponse(datasets=[convert.dataset_to_proto(r) for r in records[:size]], next_page_token=token)

    # Jobs ----------------------------------------------------------------------------

    def CreateJob(self, request, context):
        dataset = self.store.get_dataset(_id("dataset_id", request.dataset_id))
        if request.validation_dataset_id:
            self.store.get_dataset(_id("validation_dataset_id", request.validation_dataset_id))
        find_model(self.config.resolved_models_dir, request.base_model)
        requested = convert.hyperparameters_to_dict(request.hyperparameters)
        try:
            hp.resolve(hp.validate(requested), train_rows=dataset.row_count)
        except hp.HyperparameterError as error:
            raise InvalidArgument(f"hyperparameters.{error.field}", error.reason) from error
        job, created = self.store.create_job(
            dataset_id=dataset.id, validation_dataset_id=request.validation_dataset_id or None,
            base_model=request.base_model, hyperparameters=requested,
            idempotency_key=_bounded("idempotency_key", request.idempotency_key) or None,
            display_name=_bounded("display_name", request.display_name),
        )
        if created:
            job = self.store.transition(job.id, JobState.QUEUED, event_type="job.queued", message="queued",
                                        queued_at=job.created_at)
            self.scheduler.wake()
        return pb.CreateJobResponse(job=convert.job_to_proto(job))

    def GetJob(self, request, context):
        return pb.GetJobResponse(job=convert.job_to_proto(self.store.get_job(_id("job_id", request.job_id))))

    def ListJobs(self, request, context):
        states = [convert.job_state_from_proto(s) for s in request.states]
        size = pagination.page_size(request.page_size)
        jobs = self.store.list_jobs(size + 1, states=states, before_id=pagination.decode(request.page_token))
        token = pagination.encode(jobs[size - 1].id) if len(jobs) > size else ""
        return pb.ListJobsResponse(jobs=[convert.job_to_proto(j) for j in jobs[:size]], next_page_token=token)

    def CancelJob(self, request, context):
        job = self.store.get_job(_id("job_id", request.job_id))
        if job.state.terminal:
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; only a queued or running job can be cancelled")
        job = self.store.request_cancel(job.id)
        self.scheduler.wake()
        return pb.CancelJobResponse(job=convert.job_to_proto(job))

    def StreamJobEvents(self, request, context):
        job_id = _id("job_id", request.job_id)
        self.store.get_job(job_id)
        after = max(0, request.after_sequence)
        while context.is_active():
            events = self.store.events_after(job_id, after)
            for event in events:
                yield convert.event_to_proto(event)
                after = event.sequence
            if events:
                continue
            if request.no_follow or self.store.get_job(job_id).state.terminal:
                return
            self.store.wait_for_events(EVENT_WAIT_SECONDS)

    # Models and artifacts ------------------------------------------------------------

    def ListModels(self, request, context):
        models = [pb.Model(name=m.name, architecture=m.architecture, size_bytes=m.size_bytes)
                  for m in list_models(self.config.resolved_models_dir)]
        return pb.ListModelsResponse(models=models)

    def DownloadArtifact(self, request, context):
        job = self._succeeded_job(request.job_id)
        archive = self.config.job_dir(job.id) / ARCHIVE_NAME
        if not archive.is_file():
            raise NotFound(f"job {job.id} has no artifact on disk")
        first = True
        for chunk in read_chunks(archive):
            if first:
                yield pb.DownloadArtifactResponse(chunk=chunk, filename=f"{job.id}-adapter.tar.gz",
                                                  size_bytes=archive.stat().st_size, sha256=sha256_of(archive))
                first = False
            else:
                yield pb.DownloadArtifactResponse(chunk=chunk)

    def Generate(self, request, context):
        prompt = _bounded("prompt", request.prompt, MAX_PROMPT_CHARS)
        if not prompt.strip():
            raise InvalidArgument("prompt", "is empty")
        max_tokens = request.max_tokens or 128
        if not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise InvalidArgument("max_tokens", f"must be between 1 and {MAX_NEW_TOKENS}")
        if not (math.isfinite(request.temperature) and 0 <= request.temperature <= 5):
            raise InvalidArgument("temperature", "must be between 0 and 5")
        top_p = request.top_p or 1.0
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise InvalidArgument("top_p", "must be in (0, 1]")
        if len(request.stop) > MAX_STOP_SEQUENCES or any(len(s) > MAX_LABEL_CHARS or not s for s in request.stop):
            raise InvalidArgument("stop", f"at most {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_LABEL_CHARS} characters")
        if request.job_id:
            job = self._succeeded_job(request.job_id)
            base_model, adapter = job.base_model, self.config.job_dir(job.id) / "artifacts"
        elif request.base_model:
            base_model, adapter = request.base_model, None
        else:
            raise InvalidArgument("job_id", "give a job_id (its adapter) or a base_model")
        model = find_model(self.config.resolved_models_dir, base_model)
        completion = self.inference.generate(
            base_model_dir=model.path, adapter_dir=adapter, prompt=prompt, max_tokens=max_tokens,
            temperature=request.temperature, top_p=top_p, stop=list(request.stop),
        )
        return pb.GenerateResponse(text=completion.text, completion_tokens=completion.tokens)

    def _succeeded_job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(_id("job_id", job_id))
        if job.state is not JobState.SUCCEEDED:
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; it has no adapter until it SUCCEEDED")
        return job


def add_to_server(servicer: TuneVaultServicer, server: grpc.Server) -> None:
    pb_grpc.add_TuneVaultServicer_to_server(servicer, server)
