"""The scheduler: claims queued jobs, starts a worker per job, follows it, records the outcome."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from tunevault.server import hyperparameters as hp
from tunevault.server.artifacts import ARCHIVE_NAME, pack_adapter
from tunevault.server.config import ServerConfig
from tunevault.server.errors import FailedPrecondition
from tunevault.server.model_store import find_model
from tunevault.server.scheduler.executor import LocalProcessExecutor, WorkerProcess
from tunevault.server.scheduler.outcome import WorkerReport, failure
from tunevault.server.store import JobRecord, JobState, Store

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# Worker event types whose figures update the job row as well as the event log.
PROGRESS_EVENTS = {"step", "data.prepared", "checkpoint"}


class Scheduler:
    """Runs up to `max_concurrent_jobs` workers; one thread claims, one thread per worker reads."""

    def __init__(self, config: ServerConfig, store: Store, executor: LocalProcessExecutor | None = None) -> None:
        self.config = config
        self.store = store
        self.executor = executor or LocalProcessExecutor(config.python, config.jobs_dir)
        self._workers: dict[str, WorkerProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._loop_thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # Life cycle ----------------------------------------------------------------------

    def start(self) -> None:
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
        self._loop_thread.join(timeout=5)
        # Monitor threads finish the bookkeeping (requeue) as their workers exit.
        for thread in [t for t in threading.enumerate() if t.name.startswith("worker-")]:
            thread.join(timeout=5)

    def running_job_ids(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    # The claim loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._signal_cancellations()
                while self._has_free_slot() and not self._stopping.is_set():
                    job = self.store.claim_next_job(self.config.lease_seconds)
                    if job is None:
                        break
                    self._launch(job)
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad job
                log.exception("scheduler loop iteration failed")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _has_free_slot(self) -> bool:
        with self._lock:
            return len(self._workers) < self.config.max_concurrent_jobs

    def _signal_cancellations(self) -> None:
        with self._lock:
            workers = dict(self._workers)
        for job_id, worker in workers.items():
            job = self.store.get_job(job_id)
            if job.cancel_requested:
                if worker.cancel_signalled_at is None:
                    worker.cancel_signalled_at = time.monotonic()
                    worker.terminate()
                elif time.monotonic() - worker.cancel_signalled_at > self.config.cancel_grace_seconds:
                    worker.kill()

    def _launch(self, job: JobRecord) -> None:
        try:
            self._write_spec(job)
            worker = self.executor.start(job.id)
        except Exception as error:  # noqa: BLE001 - a job that cannot start fails alone
            log.exception("could not start job %s", job.id)
            self.store.transition(job.id, JobState.FAILED, event_type="job.failed",
                                  message=str(error), error_code="INTERNAL", error_message=f"could not start worker: {error}")
            return
        with self._lock:
            self._workers[job.id] = worker
        log.info("job %s started (attempt %d, pid %d)", job.id, job.attempt, worker.process.pid)
        threading.Thread(target=self._follow, args=(job, worker), name=f"worker-{job.id}", daemon=True).start()

    def _write_spec(self, job: JobRecord) -> None:
        job_dir = self.config.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        train = self.store.get_dataset(job.dataset_id)
        validation = self.store.get_dataset(job.validation_dataset_id) if job.validation_dataset_id else None
        resolved = hp.resolve(hp.validate(job.hyperparameters), train_rows=train.row_count)
        self.store.update_job(job.id, resolved_hyperparameters=resolved)
        spec = {
            "job_id": job.id,
            "base_model_dir": str(find_model(self.config.resolved_models_dir, job.base_model).path),
            "train_file": str(self.config.data_dir / train.path),
            "validation_file": str(self.config.data_dir / validation.path) if validation else None,
            "output_dir": str(job_dir / "artifacts"),
            "checkpoint_dir": str(job_dir / "checkpoints"),
            "hyperparameters": resolved,
        }
        temporary = job_dir / "spec.json.tmp"
        temporary.write_text(json.dumps(spec, indent=2))
        temporary.replace(job_dir / "spec.json")

    # Following one worker ------------------------------------------------------------

    def _follow(self, job: JobRecord, worker: WorkerProcess) -> None:
        report = WorkerReport()
        try:
            for line in worker.events:
                self._handle_line(job.id, line, report)
            returncode = worker.process.wait()
            self._finish(job, worker, report, returncode)
        except Exception:  # noqa: BLE001
            log.exception("following job %s failed", job.id)
            worker.kill()
        finally:
            with self._lock:
                self._workers.pop(job.id, None)
            self._wake.set()

    def _handle_line(self, job_id: str, line: str, report: WorkerReport) -> None:
        try:
            event = json.loads(line)
            event_type, message, metrics = str(event["type"]), str(event.get("message", "")), dict(event.get("metrics") or {})
        except (ValueError, KeyError, TypeError):
            log.warning("job %s: ignoring a malformed event line: %.200s", job_id, line)
            return
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if event_type == "result":
            report.result = metrics
        elif event_type == "error":
            report.error_code, report.error_message = str(event.get("code") or "INTERNAL"), message
            return  # recorded as job.failed with the outcome
        self.store.append_event(job_id, event_type, message, metrics)
        self._record_progress(job_id, event_type, metrics)

    def _record_progress(self, job_id: str, event_type: str, metrics: dict[str, float]) -> None:
        fields: dict[str, Any] = {"lease_expires_at": time.time() + self.config.lease_seconds}
        if event_type in PROGRESS_EVENTS:
            for key in ("step", "total_steps", "trained_tokens"):
                if key in metrics:
                    fields[key] = int(metrics[key])
        self.store.update_job(job_id, **fields)

    def _finish(self, job: JobRecord, worker: WorkerProcess, report: WorkerReport, returncode: int) -> None:
        current = self.store.get_job(job.id)
        if current.cancel_requested:
            self.store.transition(job.id, JobState.CANCELLED, event_type="job.cancelled", message="cancelled on request")
        elif returncode == 0 and report.result is not None:
            self._succeed(job, report.result)
        elif self._stopping.is_set():
            self.store.transition(job.id, JobState.QUEUED, event_type="job.requeued",
                                  message="requeued: the server is shutting down", lease_expires_at=None)
        else:
            code, message = failure(report, returncode, worker.log_path)
            self.store.transition(job.id, JobState.FAILED, event_type="job.failed", message=message,
                                  error_code=code, error_message=message)
        log.info("job %s finished: %s", job.id, self.store.get_job(job.id).state.value)

    def _succeed(self, job: JobRecord, metrics: dict[str, float]) -> None:
        job_dir = self.config.job_dir(job.id)
        size = pack_adapter(job_dir / "artifacts", job_dir / ARCHIVE_NAME, top_folder=f"{job.id}-adapter")
        result = {
            "adapter_path": str(Path("jobs") / job.id / "artifacts"),
            "metrics": metrics,
            "artifact_size_bytes": size,
        }
        try:
            self.store.transition(job.id, JobState.SUCCEEDED, event_type="job.succeeded",
                                  message="adapter ready", metrics=metrics, result=result)
        except FailedPrecondition:
            log.warning("job %s finished training but changed state meanwhile", job.id)
