"""The training worker process: runs one job from its spec.json, speaking JSON-line events on stdout.

    python -m tunevault.server.worker.train --jobs-dir JOBS_DIR JOB_ID

Exit status: 0 only after the adapter and metrics.json are completely written; 1 after an
"error" event (with an INVALID_ARGUMENT / RESOURCE_EXHAUSTED / FAILED_PRECONDITION / INTERNAL
code; FAILED_PRECONDITION when anything tried to reach the network, see egress_guard); 128+signal
(143 for SIGTERM) after a requested stop, with a checkpoint saved when any step was trained.
Human-readable logs go to stderr, which the scheduler sends to the job's log file.

Under torchrun (scheduler/launch.py, a job on several devices) every rank runs this same module;
training/distributed.py shares each step among them and rank 0 alone writes events and files.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from tunevault.server.contract.events import EventWriter, ParentGone
from tunevault.server.privacy import egress_guard
from tunevault.server.training.runtime import force_offline
from tunevault.server.worker.process import EXIT_FAILED, classify, egress_first, job_process_main

log = logging.getLogger("tunevault.worker")


class EgressCheckedEvents(EventWriter):
    """Events that stop at the first one after a blocked network attempt; an "egress.checked" precedes the result.

    With encryption at rest (a SealedJob), a "checkpoint" event is the moment its tmpfs checkpoint
    is sealed into the job folder; the event then names the sealed copy.
    """

    sealed: Any = None  # privacy.sealed_job.SealedJob, once the job's workspace is prepared

    def emit(self, event_type: str, message: str = "", metrics: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
        if event_type == "checkpoint" and self.sealed is not None and extra.get("path"):
            plain = extra["path"]
            extra["path"] = str(self.sealed.seal_checkpoint(Path(plain)))
            message = message.replace(plain, extra["path"])
        if event_type != "error":
            # A library may have swallowed the EgressBlocked it met; the job fails all the same, and
            # fails early rather than training on for a result that would be refused.
            egress_guard.raise_if_blocked()
        if event_type == "result":
            # Its own event: the result must stay equal to the one the trainer wrote into metrics.json.
            super().emit("egress.checked", "no network access was attempted", {"network_attempts_blocked": 0})
        return super().emit(event_type, message, metrics, **extra)


def run(jobs_dir: Path, job_id: str) -> int:
    # Offline and guarded before anything imports torch, transformers or huggingface_hub.
    force_offline()
    egress_guard.install()
    from tunevault.server.contract.job_spec import JobSpec
    from tunevault.server.training import distributed
    from tunevault.server.training.parent_watch import die_with_parent
    from tunevault.server.training.stopping import StopFlag, StopRequested

    # Under torchrun every rank runs this; only rank 0 speaks on stdout (which all ranks share).
    ranks = distributed.from_env()
    events = EgressCheckedEvents(sys.stdout if ranks.is_main else open(os.devnull, "w"))
    sealed = None
    stop = StopFlag()
    # The handlers only set the flag; the loop acts on it at the next step boundary.
    stop.install(signal.SIGTERM, signal.SIGINT)
    # After the handler is in place: the server's death then arrives as a SIGTERM (checkpoint, exit).
    die_with_parent()
    try:
        from tunevault.server.privacy.sealing.sealed_job import SealedJob
        from tunevault.server.training.pii_step import apply_pii
        from tunevault.server.training.runtime import quiet_progress_bars
        from tunevault.server.training.preference_trainer import PreferenceTrainer
        from tunevault.server.training.trainer import QLoRATrainer

        quiet_progress_bars()
        spec = JobSpec.load(jobs_dir / job_id / "spec.json")
        # Encryption at rest: from here on the trainer sees only a tmpfs workspace.
        sealed = SealedJob.open(spec)
        if sealed is not None:
            spec = sealed.prepare()
            events.sealed = sealed
        spec = apply_pii(spec, events)  # may point the spec at scrubbed copies, or refuse the data
        if sealed is not None:
            sealed.seal_scrubbed()
        stop.check()
        trainer = QLoRATrainer if spec.method == "sft" else PreferenceTrainer
        result = trainer(spec, events, stop, ranks).run()
        egress_guard.raise_if_blocked()
        if sealed is not None:
            sealed.seal_outputs()  # before exit 0: the scheduler packs the adapter once we are gone
        log.info("job %s succeeded: %s", job_id, result)
        return 0
    except StopRequested:
        signum = stop.signal_number or signal.SIGTERM
        log.info("job %s stopped by signal %d", job_id, signum)
        return 128 + signum
    except ParentGone:
        log.warning("job %s: the event reader is gone; exiting", job_id)
        return EXIT_FAILED
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one error event
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc(file=sys.stderr)
        code, message = classify(egress_first(exc))
        try:
            events.emit("error", message, {}, code=code)
        except ParentGone:
            pass
        return EXIT_FAILED
    finally:
        if sealed is not None:
            sealed.close()
        distributed.shut_down()


def main(argv: list[str] | None = None) -> int:
    return job_process_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
