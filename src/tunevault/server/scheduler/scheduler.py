"""The scheduler: claims queued jobs, starts a worker per job, follows it, records the outcome."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tunevault.server import logs
from tunevault.server.artifacts import ARCHIVE_NAME, pack_adapter, sha256_of
from tunevault.server.config import ServerConfig
from tunevault.server.contract import events, job_spec, memory_estimate
from tunevault.server.contract import hyperparameters as hp
from tunevault.server.errors import FailedPrecondition
from tunevault.server.metrics import Metrics
from tunevault.server.model_store import find_model
from tunevault.server.privacy.sealing import canary_secrets
from tunevault.server.privacy.sealing.keys import default_store
from tunevault.server.scheduler.executor import Executor, LocalProcessExecutor, StartUnavailable, WorkerProcess
from tunevault.server.scheduler.leftovers import ensure_worker_gone
from tunevault.server.scheduler.outcome import WorkerReport, failure
from tunevault.server.scheduler.validation import JobValidations
from tunevault.server.store import JobRecord, JobState, Store
from tunevault.server.store.states import WORKER_STATES

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
LEASE_CHECK_SECONDS = 5.0
RETENTION_CHECK_SECONDS = 600.0
# Worker event types whose figures also update the job row.
PROGRESS_EVENTS = {"step", "data.prepared", "checkpoint"}
# Error codes that a retry with the same settings cannot fix.
NOT_RETRYABLE = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"}


class Scheduler:
    """Runs up to `max_concurrent_jobs` workers; one thread claims, one thread per worker reads."""

    def __init__(self, config: ServerConfig, store: Store, metrics: Metrics,
                 executor: Executor | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.executor = executor or default_executor(config)
        self._workers: dict[str, WorkerProcess] = {}
        self._slots: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._loop_thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._next_lease_check = 0.0
        self._next_retention_check = 0.0
        self.memory_limit = memory_estimate.device_limit(config.device_memory_bytes,
                                                         concurrent_jobs=config.max_concurrent_jobs)
        self.validations = JobValidations(store, self.executor, self._write_spec, self.wake)

    # Life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Recovers what the previous process left behind, then starts claiming."""
        for job in self.store.list_jobs(limit=1_000_000, states=list(WORKER_STATES)):
            ensure_worker_gone(job.worker_pid, job.id, self.config.shutdown_grace_seconds)
        requeued = self.store.requeue_orphans()
        if requeued:
            log.info("requeued %d job(s) left running by the previous process", len(requeued))
        self._loop_thread.start()

    def wake(self) -> None:
        """Tells the loop to look at the queue now rather than at its next poll."""
        self._wake.set()

    def stop(self, grace_seconds: float) -> None:
        """Stops claiming, asks running workers to checkpoint, waits, then requeues their jobs."""
        self._stopping.set()
        self._wake.set()
        self._loop_thread.join(timeout=5)
        self.validations.stop()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.terminate()
        deadline = time.monotonic() + grace_seconds
        for worker in workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a worker that outlives the grace is killed
                worker.kill()
                worker.process.wait()
        # Follow threads do the bookkeeping (requeue) as their workers exit.
        for thread in [t for t in threading.enumerate() if t.name.startswith("worker-")]:
            thread.join(timeout=10)

    def running_job_ids(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    # The claim loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad job
                log.exception("scheduler loop iteration failed")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _tick(self) -> None:
        self._signal_stop_requests()
        now = time.monotonic()
        if now >= self._next_lease_check:
            self._next_lease_check = now + LEASE_CHECK_SECONDS
            self._rescue_expired_leases()
            self._fail_jobs_too_big_for_the_box()
        self.validations.start_pending()
        if now >= self._next_retention_check and self.config.retention_days > 0:
            self._next_retention_check = now + RETENTION_CHECK_SECONDS
            self._apply_retention()
        while self._free_slot() is not None and not self._stopping.is_set():
            job = self.store.claim_next_job(self.config.lease_seconds, self.config.gpus)
            if job is None:
                break
            self._launch(job)

    def _free_slot(self) -> int | None:
        with self._lock:
            used = set(self._slots.values())
        return next((s for s in range(self.config.max_concurrent_jobs) if s not in used), None)

    def _signal_stop_requests(self) -> None:
        """Cancel and pause change a row; here the worker is told (SIGTERM), then killed after a grace."""
        with self._lock:
            workers = dict(self._workers)
        for job_id, worker in workers.items():
            job = self.store.get_job(job_id)
            if not (job.cancel_requested or job.pause_requested):
                continue
            if worker.stop_signalled_at is None:
                worker.stop_signalled_at = time.monotonic()
                worker.terminate()
            elif time.monotonic() - worker.stop_signalled_at > self.config.cancel_grace_seconds:
                worker.kill()

    def _rescue_expired_leases(self) -> None:
        live = set(self.running_job_ids())
        for job in self.store.expired_leases(time.time()):
            if job.id in live:
                continue  # its follow thread is still reading it; it will finish the job
            ensure_worker_gone(job.worker_pid, job.id, self.config.shutdown_grace_seconds)
            log.warning("job %s lost its worker (lease expired); recovering", job.id)
            self.store.recover_lost_worker(job, "its worker stopped heartbeating (lease expired)")

    def _fail_jobs_too_big_for_the_box(self) -> None:
        """A queued job needing more GPUs than this box has (it was queued before a restart with fewer)
        could never start; it fails, naming the field, rather than wait for ever."""
        for job in self.store.too_big_for(self.config.gpus):
            self.store.record_failure(job.id, "FAILED_PRECONDITION",
                                      f"gpus: the job needs {job.gpus} GPU(s); this server has {len(self.config.gpus)}",
                                      retry_after=None)

    def _apply_retention(self) -> None:
        cutoff = time.time() - self.config.retention_days * 86400
        for job in self.store.finished_before(cutoff):
            default_store().shred("job", job.id)  # crypto-shredding: backups of the files die with the key
            self.store.delete_feedback(job.id)  # sealed with that key: unreadable now, so gone as well
            freed = delete_job_files(self.config.job_dir(job.id))
            self.store.update_job(job.id, artifacts_deleted_at=time.time())
            self.store.append_event(job.id, "job.files_deleted", f"retention: deleted {freed} bytes", {"freed_bytes": freed})

    # Starting one worker -------------------------------------------------------------

    def _launch(self, job: JobRecord) -> None:
        slot = self._free_slot()
        assert slot is not None
        try:
            self._write_spec(job)
            worker = self.executor.start(job.id, job.devices)
        except StartUnavailable as error:
            log.warning("could not start job %s yet: %s", job.id, error)
            self.store.record_failure(job.id, "UNAVAILABLE", str(error),
                                      retry_after=self._backoff(len(job.error_history) + 1))
            return
        except Exception as error:  # noqa: BLE001 - a job that cannot start fails alone
            log.exception("could not start job %s", job.id)
            self.store.record_failure(job.id, "INTERNAL", f"could not start the worker: {error}", retry_after=None)
            return
        with self._lock:
            self._workers[job.id] = worker
            self._slots[job.id] = slot
        self.store.update_job(job.id, worker_pid=worker.process.pid)
        self.metrics.job_started(job, slot)
        log.info("job %s started (attempt %d, pid %d, slot %d, GPUs %s)", job.id, job.attempt, worker.process.pid, slot,
                 ",".join(map(str, job.devices)) or "none")
        threading.Thread(target=self._follow, args=(job, worker, slot), name=f"worker-{job.id}", daemon=True).start()

    def _write_spec(self, job: JobRecord) -> None:
        """spec.json for the job's processes: written when it is validated, reused by its every attempt."""
        job_dir = self.config.job_dir(job.id)
        if (job_dir / job_spec.FILE_NAME).is_file():
            return
        train = self.store.get_dataset(job.dataset_id)
        validation = self.store.get_dataset(job.validation_dataset_id) if job.validation_dataset_id else None
        resolved = hp.resolve(hp.validate(job.hyperparameters), train_rows=train.row_count,
                              has_validation_file=validation is not None)
        self.store.update_job(job.id, resolved_hyperparameters=resolved.to_dict())
        model_dir = find_model(self.config.resolved_models_dir, job.base_model).path
        estimate = memory_estimate.preflight(model_dir, resolved, self.config.data_dir / train.path,
                                             self.memory_limit.device)
        job_spec.JobSpec(
            job_id=job.id,
            base_model_dir=model_dir,
            train_file=self.config.data_dir / train.path,
            validation_file=self.config.data_dir / validation.path if validation else None,
            output_dir=job_dir / "artifacts",
            checkpoint_dir=job_dir / "checkpoints",
            hyperparameters=resolved,
            pii=job.pii_mode,
            method=job.method,
            # The format the upload named or detected, so the worker reads the rows the same way.
            data_format=train.format if train.format != "chat_jsonl" else None,
            validation_data_format=(validation.format if validation.format != "chat_jsonl" else None)
            if validation else None,
            # The estimate and the device's limit, for the worker to report beside its measured peak.
            memory_estimate={**estimate.to_dict(), "device_memory_bytes": self.memory_limit.bytes} if estimate else None,
        ).write(job_dir)

    # Following one worker ------------------------------------------------------------

    def _follow(self, job: JobRecord, worker: WorkerProcess, slot: int) -> None:
        logs.job_id.set(job.id)
        report = WorkerReport(last_trained_tokens=job.trained_tokens)
        try:
            process = psutil.Process(worker.process.pid)
            for line in worker.events:
                self._handle_line(job.id, slot, line, report)
                self._sample_memory(process, slot)
            returncode = worker.process.wait()
            self._finish(job, worker, report, returncode)
        except Exception:  # noqa: BLE001
            log.exception("following job %s failed", job.id)
            worker.kill()
        finally:
            with self._lock:
                self._workers.pop(job.id, None)
                self._slots.pop(job.id, None)
            self.metrics.worker_stopped(slot)
            self._wake.set()

    def _sample_memory(self, process: psutil.Process, slot: int) -> None:
        try:
            self.metrics.worker_rss(slot, process.memory_info().rss)
        except psutil.Error:
            pass

    def _handle_line(self, job_id: str, slot: int, line: str, report: WorkerReport) -> None:
        event = events.parse_line(line)
        if event is None:
            log.warning("job %s: ignoring a malformed event line (%d characters)", job_id, len(line))
            return
        figures = event.metrics
        if event.type == "error":
            report.error_code, report.error_message = str(event.extra.get("code") or "INTERNAL"), event.message
            return  # becomes the job's error when the worker exits
        if event.type == "result":
            report.result = figures
        if event.type == "data.prepared" and isinstance(event.extra.get("hyperparameters"), dict):
            # The worker's final word on "auto" values that need the data (max_seq_len, modules).
            self.store.update_job(job_id, resolved_hyperparameters=event.extra["hyperparameters"])
        self.store.append_event(job_id, event.type, event.message, figures)
        new_tokens = 0
        if "trained_tokens" in figures:
            new_tokens = max(0, int(figures["trained_tokens"]) - report.last_trained_tokens)
            report.last_trained_tokens = max(report.last_trained_tokens, int(figures["trained_tokens"]))
        self.metrics.worker_event(slot, event.type, figures, new_tokens)
        self._record_progress(job_id, event.type, figures)

    def _record_progress(self, job_id: str, event_type: str, figures: dict[str, float]) -> None:
        # Any line from the worker is a heartbeat: the lease moves forward.
        fields: dict[str, Any] = {"lease_expires_at": time.time() + self.config.lease_seconds}
        if event_type in PROGRESS_EVENTS:
            for key in ("step", "total_steps", "trained_tokens"):
                if key in figures:
                    fields[key] = int(figures[key])
        self.store.update_job(job_id, **fields)

    def _finish(self, job: JobRecord, worker: WorkerProcess, report: WorkerReport, returncode: int) -> None:
        current = self.store.get_job(job.id)
        if current.cancel_requested:
            finished = self.store.transition(job.id, JobState.CANCELLED, event_type="job.cancelled",
                                             message="cancelled on request", lease_expires_at=None)
        elif returncode == 0 and report.result is not None:
            finished = self._succeed(job, report.result)
        elif current.pause_requested:
            finished = self.store.transition(job.id, JobState.PAUSED, event_type="job.paused",
                                             message=f"paused at step {current.step}", lease_expires_at=None)
        elif self._stopping.is_set():
            self.store.recover_lost_worker(current, "the server is shutting down")
            finished = self.store.get_job(job.id)
        else:
            code, message = failure(report, returncode, worker.log_path)
            # Backoff grows with failures, not starts: server restarts are not the job's fault.
            retry_after = None if code in NOT_RETRYABLE else self._backoff(len(current.error_history) + 1)
            finished = self.store.record_failure(job.id, code, message, retry_after=retry_after)
        log.info("job %s: worker exited (%d); job is %s", job.id, returncode, finished.state.value)

    def _backoff(self, failures: int) -> float:
        return min(self.config.retry_backoff_seconds * 2 ** max(0, failures - 1), self.config.retry_backoff_max_seconds)

    def _succeed(self, job: JobRecord, metrics: dict[str, float]) -> JobRecord:
        job_dir = self.config.job_dir(job.id)
        size = pack_adapter(job_dir / "artifacts", job_dir / ARCHIVE_NAME, top_folder=f"{job.id}-adapter")
        result = {"adapter_path": str(Path("jobs") / job.id / "artifacts"), "metrics": metrics,
                  "artifact_size_bytes": size, "adapter_sha256": sha256_of(job_dir / ARCHIVE_NAME)}
        try:
            return self.store.transition(job.id, JobState.SUCCEEDED, event_type="job.succeeded",
                                         message="adapter ready", metrics=metrics, result=result,
                                         lease_expires_at=None)
        except FailedPrecondition:
            log.warning("job %s finished training but changed state meanwhile", job.id)
            return self.store.get_job(job.id)


def default_executor(config: ServerConfig) -> Executor:
    """Workers as local processes, or (`--executor kubernetes`) as Kubernetes Jobs configured by TUNEVAULT_K8S_*."""
    local = LocalProcessExecutor(config.python, config.jobs_dir, gpu_box=bool(config.gpus))
    if config.executor != "kubernetes":
        return local
    from tunevault.server.scheduler import kubernetes  # only a cluster deployment needs it

    return kubernetes.KubernetesExecutor(kubernetes.settings_from_env(os.environ), local)


def delete_job_files(job_dir: Path) -> int:
    """Removes a job's artifacts, archive, checkpoints and sealed secrets; keeps spec and log. Returns bytes freed."""
    freed = 0
    for name in ("artifacts", "merged", "checkpoints", ARCHIVE_NAME, canary_secrets.FILE_NAME):
        path = job_dir / name
        freed += disk_usage(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
    return freed


def disk_usage(path: Path) -> int:
    """Bytes under `path` (a file or a folder), not following symlinks."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(_size(p) for p in path.rglob("*"))


def _size(path: Path) -> int:
    """A regular file's size (0 for folders and symlinks), from one lstat; 0 if it went away since
    it was listed: a running worker renames its files (spec.json.tmp -> spec.json), and GetJob
    failed with INTERNAL when it caught one mid-rename."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0
