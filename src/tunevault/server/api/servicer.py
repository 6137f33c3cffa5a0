"""The TuneVault gRPC service: validate each request, then hand it to the store or scheduler.

Every lookup is scoped to the caller's tenant (an admin's scope is every tenant), so another
tenant's job or dataset is NOT_FOUND: its existence does not leak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tunevault.server import feedback
from tunevault.server.api import convert, pagination
from tunevault.server.api import validation as check
from tunevault.server.api.auth import check_tenant_name, current_call_site, current_principal, hash_token, new_secret
from tunevault.server.api.denials import record_denial
from tunevault.server.api.uploads import CHUNK_BYTES, receive_dataset
from tunevault.server.artifacts import ARCHIVE_NAME, archive_size, read_chunks, sha256_of
from tunevault.server.config import ServerConfig
from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract import memory_estimate
from tunevault.server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tunevault.server.ids import new_id
from tunevault.server.inference.client import InferenceProcess
from tunevault.server.model_store import find_model, list_models
from tunevault.server.privacy.sealing import canary_secrets
from tunevault.server.privacy.sealing.keys import default_store
from tunevault.server.scheduler.scheduler import Scheduler, delete_job_files, disk_usage
from tunevault.server.store import DatasetRecord, JobRecord, JobState, Store
from tunevault.server.store.states import WORKER_STATES
from tunevault.v1 import tunevault_pb2 as pb
from tunevault.v1 import tunevault_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

EVENT_WAIT_SECONDS = 1.0


class TuneVaultServicer(pb_grpc.TuneVaultServicer):
    def __init__(self, config: ServerConfig, store: Store, scheduler: Scheduler, inference: InferenceProcess,
                 version: str) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.inference = inference
        self.version = version
        self.started = time.monotonic()
        self.memory_limit = memory_estimate.device_limit(config.device_memory_bytes,
                                                         concurrent_jobs=config.max_concurrent_jobs)

    def _job(self, job_id: str) -> JobRecord:
        job_id = check.required_id("job_id", job_id)
        try:
            return self.store.get_job(job_id, tenant=current_principal().scope)
        except NotFound as error:
            self._audit_if_cross_tenant(error, lambda: self.store.get_job(job_id), job_id=job_id)
            raise

    def _dataset(self, field: str, dataset_id: str) -> DatasetRecord:
        dataset_id = check.required_id(field, dataset_id)
        try:
            return self.store.get_dataset(dataset_id, tenant=current_principal().scope)
        except NotFound as error:
            self._audit_if_cross_tenant(error, lambda: self.store.get_dataset(dataset_id), dataset_id=dataset_id)
            raise

    def _audit_if_cross_tenant(self, error: NotFound, unscoped_lookup: Callable[[], object], **ids: str) -> None:
        """A caller reaching for another tenant's row still gets NOT_FOUND, but the attempt is audited."""
        principal = current_principal()
        if principal.scope is None:
            return
        try:
            unscoped_lookup()
        except NotFound:
            return  # it exists nowhere: an ordinary miss
        record_denial(self.store, *current_call_site(), error, principal, action="denied.cross_tenant", **ids)

    def _audit(self, action: str, *, tenant: str | None = None, job_id: str | None = None,
               dataset_id: str | None = None, **details) -> None:
        principal = current_principal()
        self.store.append_audit(principal=principal.token_id, tenant=tenant or principal.tenant, action=action,
                                job_id=job_id, dataset_id=dataset_id, details=details)

    def _job_message(self, job: JobRecord) -> pb.Job:
        return convert.job_to_proto(job, disk_usage(self.config.job_dir(job.id)),
                                    encryption_key_id=default_store().key_id("job", job.id),
                                    default_gpus=1 if self.config.gpus else 0)

    # Datasets ------------------------------------------------------------------------

    def UploadDataset(self, request_iterator, context):
        record = self._receive_dataset(request_iterator, current_principal().tenant)
        self._audit("UploadDataset", dataset_id=record.id, sha256=record.sha256, rows=record.row_count,
                    size_bytes=record.size_bytes)
        return pb.UploadDatasetResponse(dataset=convert.dataset_to_proto(record))

    def _receive_dataset(self, request_iterator: Iterator[pb.UploadDatasetRequest], tenant: str) -> DatasetRecord:
        """Stores an upload for `tenant` within its storage quota: the one way a dataset comes in."""
        stored, _ = self.store.tenant_usage(tenant)
        room = self.config.max_tenant_storage_bytes - stored
        if room <= 0:
            raise ResourceExhausted(f"tenant storage quota reached: max_tenant_storage_bytes={self.config.max_tenant_storage_bytes}")
        if room < self.config.max_upload_bytes:
            limit = ("max_tenant_storage_bytes (what is left of it)", room)
        else:
            limit = ("max_upload_bytes", self.config.max_upload_bytes)
        return receive_dataset(request_iterator, self.store, self.config, tenant=tenant,
                               max_bytes=limit[1], limit_name=limit[0])

    def GetDataset(self, request, context):
        return pb.GetDatasetResponse(dataset=convert.dataset_to_proto(self._dataset("dataset_id", request.dataset_id)))

    def ListDatasets(self, request, context):
        size = pagination.page_size(request.page_size)
        records = self.store.list_datasets(size + 1, before_id=pagination.decode(request.page_token),
                                           tenant=current_principal().scope)
        token = pagination.encode(records[size - 1].id) if len(records) > size else ""
        return pb.ListDatasetsResponse(datasets=[convert.dataset_to_proto(r) for r in records[:size]],
                                       next_page_token=token)

    def DeleteDataset(self, request, context):
        dataset = self._dataset("dataset_id", request.dataset_id)
        deleted = self.store.delete_dataset(dataset.id)  # FAILED_PRECONDITION while a job needs it
        # Key first: from this moment every copy of the file, backups included, is undecryptable.
        key_id = default_store().shred("dataset", dataset.id)
        path = self.config.data_dir / dataset.path
        freed = disk_usage(path)
        path.unlink(missing_ok=True)
        self._audit("DeleteDataset", tenant=dataset.tenant, dataset_id=dataset.id, sha256=dataset.sha256,
                    destroyed_key_id=key_id, freed_bytes=freed)
        return pb.DeleteDatasetResponse(dataset=convert.dataset_to_proto(deleted), freed_bytes=freed,
                                        destroyed_key_id=key_id or "")

    # Jobs ----------------------------------------------------------------------------

    def CreateJob(self, request, context):
        principal = current_principal()
        dataset = self._dataset("dataset_id", request.dataset_id)
        if request.validation_dataset_id:
            validation = self._dataset("validation_dataset_id", request.validation_dataset_id)
            if validation.tenant != dataset.tenant:
                raise InvalidArgument("validation_dataset_id", "must belong to the same tenant as dataset_id")
        model = find_model(self.config.resolved_models_dir, request.base_model)
        requested = convert.hyperparameters_to_dict(request.hyperparameters)
        method = check.training_method(request.method)
        check.method_fits(method, requested, {"dataset_id": dataset.format, **(
            {"validation_dataset_id": validation.format} if request.validation_dataset_id else {})})
        if method != "sft" and request.HasField("gpus") and request.gpus > 1:
            # The preference loop has no rank sharding yet: N ranks would each train the whole job.
            raise InvalidArgument("gpus", f"method {method.upper()} runs on one device for now; ask for 0 or 1")
        try:
            resolved = hp.resolve(hp.validate(requested), train_rows=dataset.row_count,
                                  has_validation_file=bool(request.validation_dataset_id))
        except hp.HyperparameterError as error:
            raise InvalidArgument(f"hyperparameters.{error.field}", error.reason) from error
        try:
            # From here on the job row, the audit log and spec.json hold placeholders for user secrets.
            requested, secrets = canary_secrets.withhold(requested)
        except ValueError as error:
            raise InvalidArgument(f"hyperparameters.{canary_secrets.FIELD}", str(error)) from error
        estimate = self._memory_preflight(model.path, resolved, dataset)
        _, pending = self.store.tenant_usage(dataset.tenant)
        if pending >= self.config.max_pending_jobs_per_tenant:
            raise ResourceExhausted(f"too many unfinished jobs: max_pending_jobs_per_tenant={self.config.max_pending_jobs_per_tenant}")
        job, created = self.store.create_job(
            dataset_id=dataset.id, validation_dataset_id=request.validation_dataset_id or None,
            base_model=request.base_model, hyperparameters=requested,
            idempotency_key=check.bounded("idempotency_key", request.idempotency_key) or None,
            display_name=check.bounded("display_name", request.display_name),
            priority=check.priority(request.priority), max_attempts=check.max_attempts(request.max_attempts),
            not_before=check.not_before(request), tenant=dataset.tenant, created_by=principal.token_id,
            pii_mode=check.pii_mode(request.pii), gpus=check.gpus(request, self.config.gpus), method=method,
            audit_details={"dataset_sha256": dataset.sha256, "base_model": request.base_model,
                           "validation_dataset_id": request.validation_dataset_id or None,
                           "hyperparameters": requested, "pii": check.pii_mode(request.pii), "method": method,
                           "estimated_peak_memory_bytes": estimate.total if estimate else None},
        )
        if created and secrets:
            # Sealed before the scheduler is woken; a worker starts only after the VALIDATING step anyway.
            canary_secrets.seal(secrets, self.config.job_dir(job.id), default_store().get_or_create("job", job.id))
        if created:
            self.scheduler.wake()
        return pb.CreateJobResponse(job=self._job_message(job))

    def _memory_preflight(self, model_dir: Path, resolved: hp.ResolvedHyperparameters,
                          dataset: DatasetRecord) -> memory_estimate.MemoryEstimate | None:
        """Refuses a job whose estimated peak memory exceeds the device's, before anything is stored."""
        limit = self.memory_limit
        if limit.bytes is None:
            return None
        estimate = memory_estimate.preflight(model_dir, resolved, self.config.data_dir / dataset.path, limit.device)
        if estimate is not None and estimate.exceeds(limit.bytes):
            raise FailedPrecondition(
                f"estimated peak memory {memory_estimate.gib(estimate.total)} exceeds the device's "
                f"{memory_estimate.gib(limit.bytes)} (batch_size {estimate.batch_size} x max_seq_len "
                f"{estimate.max_seq_len}); lower batch_size or max_seq_len"
            )
        return estimate

    def GetJob(self, request, context):
        return pb.GetJobResponse(job=self._job_message(self._job(request.job_id)))

    def ListJobs(self, request, context):
        states = [convert.job_state_from_proto(s) for s in request.states]
        size = pagination.page_size(request.page_size)
        jobs = self.store.list_jobs(size + 1, states=states, before_id=pagination.decode(request.page_token),
                                    tenant=current_principal().scope)
        token = pagination.encode(jobs[size - 1].id) if len(jobs) > size else ""
        return pb.ListJobsResponse(jobs=[self._job_message(j) for j in jobs[:size]], next_page_token=token)

    def CancelJob(self, request, context):
        job = self._job(request.job_id)
        if job.state.terminal:
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; only an unfinished job can be cancelled")
        job = self.store.request_cancel(job.id)
        self._audit("CancelJob", tenant=job.tenant, job_id=job.id)
        self.scheduler.wake()
        return pb.CancelJobResponse(job=self._job_message(job))

    def PauseJob(self, request, context):
        job = self._job(request.job_id)
        if job.state not in (JobState.QUEUED, JobState.RUNNING, JobState.PAUSING, JobState.PAUSED):
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; only a queued or running job can be paused")
        job = self.store.request_pause(job.id)
        self._audit("PauseJob", tenant=job.tenant, job_id=job.id)
        self.scheduler.wake()
        return pb.PauseJobResponse(job=self._job_message(job))

    def ResumeJob(self, request, context):
        job = self.store.resume(self._job(request.job_id).id)
        self._audit("ResumeJob", tenant=job.tenant, job_id=job.id)
        self.scheduler.wake()
        return pb.ResumeJobResponse(job=self._job_message(job))

    def DeleteJob(self, request, context):
        job = self._job(request.job_id)
        if not job.state.terminal:
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; cancel it before deleting its files")
        # Key first (crypto-shredding): even a file that survives the deletion, or a backup, is unreadable.
        # The job's feedback is sealed with the same key, so it goes with it; its rows are removed too.
        key_id = default_store().shred("job", job.id)
        feedback_deleted = self.store.delete_feedback(job.id)
        job_dir = self.config.job_dir(job.id)
        freed = delete_job_files(job_dir) + disk_usage(job_dir / "scrubbed")
        shutil.rmtree(job_dir / "scrubbed", ignore_errors=True)  # the PII step's sealed copies
        if job.artifacts_deleted_at is None:
            self.store.update_job(job.id, artifacts_deleted_at=time.time())
            self.store.append_event(job.id, "job.files_deleted", f"deleted {freed} bytes", {"freed_bytes": freed})
        self._audit("DeleteJob", tenant=job.tenant, job_id=job.id, freed_bytes=freed, destroyed_key_id=key_id,
                    feedback_deleted=feedback_deleted)
        return pb.DeleteJobResponse(job=self._job_message(self.store.get_job(job.id)), freed_bytes=freed,
                                    destroyed_key_id=key_id or "")

    def ListCheckpoints(self, request, context):
        folder = self.config.job_dir(self._job(request.job_id).id) / "checkpoints"
        found = []
        for path in folder.glob("step-*") if folder.is_dir() else []:
            step = path.name.removeprefix("step-")
            if path.is_dir() and not path.is_symlink() and step.isdigit():
                found.append(pb.Checkpoint(step=int(step), created_at=convert.timestamp(path.stat().st_mtime),
                                           metrics=check.checkpoint_metrics(path), size_bytes=disk_usage(path)))
        return pb.ListCheckpointsResponse(checkpoints=sorted(found, key=lambda c: c.step))

    def StreamJobEvents(self, request, context):
        job_id = self._job(request.job_id).id
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

    def GetStatus(self, request, context):
        scope = current_principal().scope
        counts = {state.value: n for state, n in self.store.count_jobs_by_state(tenant=scope).items()}
        running = self.store.list_jobs(100, states=WORKER_STATES, tenant=scope)
        return pb.GetStatusResponse(
            version=self.version, jobs_by_state=counts, running_jobs=[self._job_message(j) for j in running],
            data_bytes=disk_usage(self.config.data_dir) if scope is None else self.store.tenant_usage(scope)[0],
            disk_free_bytes=shutil.disk_usage(self.config.data_dir).free,
            uptime_seconds=time.monotonic() - self.started, retention_days=self.config.retention_days,
            gpus=convert.gpu_slots(self.config.gpus, self.store.held_devices(), scope),
        )

    # Models, artifacts, generation ---------------------------------------------------

    def ListModels(self, request, context):
        models = [pb.Model(name=m.name, architecture=m.architecture, size_bytes=m.size_bytes)
                  for m in list_models(self.config.resolved_models_dir)]
        return pb.ListModelsResponse(models=models)

    def DownloadArtifact(self, request, context):
        job = self._succeeded_job(request.job_id)
        archive = self.config.job_dir(job.id) / ARCHIVE_NAME
        if not archive.is_file() or archive.is_symlink():
            raise NotFound(f"job {job.id} has no artifact on disk")
        # The archive is sealed at rest: digest, size and chunks are of its plaintext, decrypted in memory.
        digest = sha256_of(archive)
        self._audit("DownloadArtifact", tenant=job.tenant, job_id=job.id, adapter_sha256=digest)
        first = True
        for chunk in read_chunks(archive):
            if first:
                yield pb.DownloadArtifactResponse(chunk=chunk, filename=f"{job.id}-adapter.tar.gz",
                                                  size_bytes=archive_size(archive), sha256=digest)
                first = False
            else:
                yield pb.DownloadArtifactResponse(chunk=chunk)

    def Generate(self, request, context):
        completion = self.inference.generate(**self._generation(request, "Generate"))
        return pb.GenerateResponse(text=completion.text, completion_tokens=completion.tokens,
                                   prompt_tokens=completion.prompt_tokens, finish_reason=completion.finish_reason)

    def GenerateStream(self, request, context):
        with contextlib.closing(self.inference.generate_stream(**self._generation(request, "GenerateStream"))) as items:
            for item in items:
                if isinstance(item, str):
                    yield pb.GenerateStreamResponse(delta=item)
                else:
                    yield pb.GenerateStreamResponse(completion_tokens=item.tokens, prompt_tokens=item.prompt_tokens,
                                                    finish_reason=item.finish_reason)
                if not context.is_active():
                    return  # the caller went away; closing drains the rest of this generation

    def _generation(self, request: pb.GenerateRequest, method: str) -> dict:
        """The inference request's fields for a checked GenerateRequest of the caller's."""
        max_tokens, top_p = check.generation(request)
        if request.job_id:
            job = self._succeeded_job(request.job_id)
            base_model, adapter = job.base_model, self.config.job_dir(job.id) / "artifacts"
        elif request.base_model:
            base_model, adapter = request.base_model, None
        else:
            raise InvalidArgument("job_id", "give a job_id (its adapter) or a base_model")
        model = find_model(self.config.resolved_models_dir, base_model)
        # The prompt itself is not logged: it may carry exactly the data this appliance protects.
        history = [{"role": t.role, "content": t.content} for t in request.history]
        self._audit(method, job_id=request.job_id or None, base_model=base_model,
                    prompt_chars=len(request.prompt) + sum(len(t["content"]) for t in history))
        return {"base_model_dir": model.path, "adapter_dir": adapter, "prompt": request.prompt,
                "system": request.system or None, "max_tokens": max_tokens, "temperature": request.temperature,
                "top_p": top_p, "stop": list(request.stop), "history": history, "raw": request.raw,
                "seed": request.seed if request.HasField("seed") else None}

    def _succeeded_job(self, job_id: str) -> JobRecord:
        job = self._job(job_id)
        if job.state is not JobState.SUCCEEDED:
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; it has no adapter until it SUCCEEDED")
        if job.artifacts_deleted_at is not None:
            raise FailedPrecondition(f"job {job.id}'s artifacts were deleted")
        return job

    # Feedback ------------------------------------------------------------------------

    def RecordFeedback(self, request, context):
        rating, texts = check.feedback(request)
        job = self._succeeded_job(request.job_id)
        key = default_store().get_or_create("job", job.id)  # the key its artifacts are sealed with
        feedback_id = new_id("fb")
        record = self.store.insert_feedback(
            feedback_id=feedback_id, job_id=job.id, tenant=job.tenant, rating=rating,
            has_rewrite=bool(texts.preferred_completion), sealed=feedback.seal_texts(feedback_id, texts, key),
            created_by=current_principal().token_id)
        # Sizes only: the texts may carry exactly the data this appliance protects.
        self._audit("RecordFeedback", tenant=job.tenant, job_id=job.id, feedback_id=record.id, rating=rating,
                    has_rewrite=record.has_rewrite, completion_chars=len(texts.completion),
                    prompt_chars=len(texts.prompt) + sum(len(content) for _, content in texts.history))
        return pb.RecordFeedbackResponse(feedback=convert.feedback_to_proto(record, texts))

    def ListFeedback(self, request, context):
        job = self._job(request.job_id)
        size = pagination.page_size(request.page_size)
        records = self.store.list_feedback(job.id, size + 1, before_id=pagination.decode(request.page_token))
        token = pagination.encode(records[size - 1].id) if len(records) > size else ""
        unwrap = default_store().unwrap
        return pb.ListFeedbackResponse(
            feedback=[convert.feedback_to_proto(r, feedback.open_texts(r, unwrap)) for r in records[:size]],
            next_page_token=token)

    def ExportFeedback(self, request, context):
        job = self._job(request.job_id)
        name = check.bounded("name", request.name) or f"feedback-{job.id}"
        unwrap = default_store().unwrap
        entries = [(r.rating, feedback.open_texts(r, unwrap)) for r in reversed(self.store.list_feedback(job.id))]
        pairs = feedback.preference_pairs(entries)
        if not pairs.rows:
            raise FailedPrecondition(f"job {job.id}: {feedback.missing_pairs_reason(entries)}")
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in pairs.rows).encode("utf-8")

        def upload() -> Iterator[pb.UploadDatasetRequest]:
            # The same path as UploadDataset: quota, row checks, sealed at rest with a new data key.
            yield pb.UploadDatasetRequest(metadata=pb.DatasetMetadata(name=name))
            for start in range(0, len(data), CHUNK_BYTES):
                yield pb.UploadDatasetRequest(chunk=data[start:start + CHUNK_BYTES])

        record = self._receive_dataset(upload(), job.tenant)
        self._audit("ExportFeedback", tenant=job.tenant, job_id=job.id, dataset_id=record.id, sha256=record.sha256,
                    rows=record.row_count, size_bytes=record.size_bytes, feedback_count=len(entries),
                    rewrite_pairs=pairs.rewrite_pairs, rating_pairs=pairs.rating_pairs)
        return pb.ExportFeedbackResponse(dataset=convert.dataset_to_proto(record), pair_count=len(pairs.rows),
                                         rewrite_pairs=pairs.rewrite_pairs, rating_pairs=pairs.rating_pairs,
                                         feedback_count=len(entries))

    # Tokens (admin) ------------------------------------------------------------------

    def CreateToken(self, request, context):
        tenant = check_tenant_name(request.tenant)
        role = check.role_name(request.role)
        secret = new_secret()
        record = self.store.insert_token(token_sha256=hash_token(secret), tenant=tenant, role=role,
                                         name=check.bounded("name", request.name))
        self._audit("CreateToken", tenant=tenant, token_id=record.id, role=role)
        return pb.CreateTokenResponse(token=convert.token_to_proto(record), secret=secret)

    def ListTokens(self, request, context):
        tenant = check_tenant_name(request.tenant) if request.tenant else None
        return pb.ListTokensResponse(tokens=[convert.token_to_proto(t) for t in self.store.list_tokens(tenant)])

    def RevokeToken(self, request, context):
        record = self.store.revoke_token(check.required_id("token_id", request.token_id))
        self._audit("RevokeToken", tenant=record.tenant, token_id=record.id)
        return pb.RevokeTokenResponse(token=convert.token_to_proto(record))


def add_to_server(servicer: TuneVaultServicer, server) -> None:
    pb_grpc.add_TuneVaultServicer_to_server(servicer, server)
