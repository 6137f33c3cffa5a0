"""The VALIDATING step: one validation process per new job, then QUEUED, or FAILED with its reason.

CreateJob checks what needs no tokenizer (ids, hyperparameters, memory) and stores the job
VALIDATING; this runs `tunevault.server.worker.validate` on it (tokenizer and chat template, no model
weights), records its warnings and statistics as job events, and only then queues it. Jobs are
validated oldest first, a few at a time, beside the training slots, so a long training job
never holds up the check of a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from tunevault.server.contract import events
from tunevault.server.errors import FailedPrecondition
from tunevault.server.scheduler.executor import Executor, WorkerProcess
from tunevault.server.scheduler.outcome import WorkerReport, failure
from tunevault.server.store import JobRecord, JobState, Store

log = logging.getLogger(__name__)

MAX_CONCURRENT_VALIDATIONS = 2
# A tokenizer pass over the largest upload allowed takes minutes, not hours.
VALIDATION_TIMEOUT_SECONDS = 1800.0


class JobValidations:
    """Starts and follows validation processes; the scheduler calls start_pending() each tick."""

    def __init__(self, store: Store, executor: Executor, write_spec: Callable[[JobRecord], None],
                 wake: Callable[[], None]) -> None:
        self.store = store
        self.executor = executor
        self.write_spec = write_spec
        self.wake = wake
        self._running: dict[str, WorkerProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start_pending(self) -> None:
        with self._lock:
            room = MAX_CONCURRENT_VALIDATIONS - len(self._running)
            busy = list(self._running)
        if room <= 0 or self._stopping.is_set():
            return
        for job in self.store.oldest_validating_jobs(room, excluding=busy):
            self._start(job)

    def stop(self) -> None:
        """Kills running validations; their jobs stay VALIDATING and are checked again after a restart."""
        self._stopping.set()
        with self._lock:
            running = list(self._running.values())
        for process in running:
            process.kill()

    def _start(self, job: JobRecord) -> None:
        try:
            self.write_spec(job)
            process = self.executor.start_validation(job.id)
        except Exception as error:  # noqa: BLE001 - a job that cannot be checked fails alone
            log.exception("could not validate job %s", job.id)
            self._fail(job.id, "INTERNAL", f"could not start the validation: {error}")
            return
        with self._lock:
            self._running[job.id] = process
        threading.Thread(target=self._follow, args=(job.id, process), name=f"validate-{job.id}", daemon=True).start()

    def _follow(self, job_id: str, process: WorkerProcess) -> None:
        watchdog = threading.Timer(VALIDATION_TIMEOUT_SECONDS, process.kill)
        watchdog.start()
        report = WorkerReport()
        validated: dict[str, Any] | None = None
        try:
            for line in process.events:
                validated = self._handle_line(job_id, line, report) or validated
            returncode = process.process.wait()
            if self._stopping.is_set():
                return
            if returncode == 0 and validated is not None:
                self._queue(job_id, validated)
            else:
                code, message = failure(report, returncode, process.log_path)
                self._fail(job_id, code, message)
        except Exception:  # noqa: BLE001
            log.exception("following the validation of job %s failed", job_id)
            process.kill()
        finally:
            watchdog.cancel()
            with self._lock:
                self._running.pop(job_id, None)
            self.wake()

    def _handle_line(self, job_id: str, line: str, report: WorkerReport) -> dict[str, Any] | None:
        """Records one event; returns the "validated" event when this is it."""
        event = events.parse_line(line)
        if event is None:
            log.warning("job %s: ignoring a malformed validation line (%d characters)", job_id, len(line))
            return None
        if event.type == "error":
            report.error_code, report.error_message = str(event.extra.get("code") or "INTERNAL"), event.message
            return None
        if event.type == "validated":
            return {"message": event.message, "metrics": event.metrics}
        self.store.append_event(job_id, event.type, event.message, event.metrics)
        return None

    def _queue(self, job_id: str, validated: dict[str, Any]) -> None:
        try:
            self.store.transition(job_id, JobState.QUEUED, event_type="job.validated",
                                  message=validated["message"], metrics=validated["metrics"], queued_at=time.time())
        except FailedPrecondition:
            log.info("job %s changed state while it was validated (cancelled?)", job_id)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        try:
            self.store.transition(job_id, JobState.FAILED, event_type="job.failed",
                                  message=f"validation failed: {message}", error_code=code, error_message=message)
        except FailedPrecondition:
            log.info("job %s changed state while it was validated (cancelled?)", job_id)
