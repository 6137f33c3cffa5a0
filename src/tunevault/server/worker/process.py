"""What every per-job process shares: its command line, and how a failure becomes a status code and one line."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from tunevault.server.privacy import egress_guard

EXIT_FAILED = 1
# Not PERMISSION_DENIED: the scheduler retries any code outside its NOT_RETRYABLE set, and a retry
# would run the same network-reaching code again. Nor is the caller at fault: the installed
# software broke a precondition of every job (zero egress), which no retry can fix.
EGRESS_CODE = "FAILED_PRECONDITION"


def one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify(exc: BaseException) -> tuple[str, str]:
    """(status code, readable one-line reason) for a failed job."""
    if isinstance(exc, egress_guard.EgressBlocked):
        return EGRESS_CODE, one_line(str(exc))
    from tunevault.server.errors import FailedPrecondition
    from tunevault.server.privacy.sealing.encryption import DecryptionError

    # A destroyed key, a wrong master key, a tampered file or no tmpfs: no retry can fix these.
    if isinstance(exc, (FailedPrecondition, DecryptionError)):
        return "FAILED_PRECONDITION", one_line(str(exc))
    import torch

    from tunevault.server.contract.chat_data import DatasetError
    from tunevault.server.contract.hyperparameters import HyperparameterError
    from tunevault.server.contract.job_spec import SpecError
    from tunevault.server.training.trainer import TrainingDiverged

    if isinstance(exc, (SpecError, HyperparameterError, DatasetError, TrainingDiverged)):
        return "INVALID_ARGUMENT", one_line(str(exc))
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return "RESOURCE_EXHAUSTED", "out of memory; retry with a smaller batch_size or max_seq_len"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "RESOURCE_EXHAUSTED", one_line(f"out of disk space: {exc}")
    return "INTERNAL", one_line(f"{type(exc).__name__}: {exc}")


def egress_first(exc: BaseException) -> BaseException:
    """A blocked network attempt is the job's failure even when the error that surfaced is another one."""
    try:
        egress_guard.raise_if_blocked()
    except egress_guard.EgressBlocked as blocked:
        return blocked
    return exc


def job_process_main(run_job: Callable[[Path, str], int], description: str, argv: list[str] | None = None) -> int:
    """The command line of a per-job process (this worker, the validator): --jobs-dir DIR JOB_ID, logs on stderr."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs-dir", type=Path, required=True, help="directory holding JOB_ID/spec.json")
    parser.add_argument("job_id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_job(args.jobs_dir, args.job_id)
