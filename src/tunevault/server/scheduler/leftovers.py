"""Making sure a job's previous worker is gone before anyone else touches the job's files."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _is_worker_of(pid: int, job_id: str) -> bool:
    """True if `pid` is alive and is our worker for `job_id` (pids are reused by the kernel)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tunevault.server.worker.train" in cmdline and job_id.encode() in cmdline


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signals a worker's whole process group when it leads one (executors start each in its own
    session), else the process alone; a process that is already gone is not an error."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def ensure_worker_gone(pid: int | None, job_id: str, grace_seconds: float) -> None:
    """Asks a leftover worker to checkpoint and exit (SIGTERM), and kills it after the grace.

    A worker outlives a SIGKILLed server for the moment it takes to checkpoint; starting a
    second worker on the same checkpoints meanwhile would race it.
    """
    if not pid or not _is_worker_of(pid, job_id):
        return
    log.info("waiting for the previous worker of %s (pid %d) to exit", job_id, pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _is_worker_of(pid, job_id) or _is_zombie(pid):
            return
        time.sleep(0.1)
    log.warning("previous worker of %s (pid %d) ignored SIGTERM; killing it", job_id, pid)
    signal_group(pid, signal.SIGKILL)
    while _is_worker_of(pid, job_id) and not _is_zombie(pid):
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
