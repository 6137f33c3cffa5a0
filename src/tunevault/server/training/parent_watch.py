"""A worker dies with the server that started it: the kernel sends it SIGTERM (PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1
PARENT_ENV = "TUNEVAULT_PARENT_PID"


def die_with_parent() -> None:
    """Asks for SIGTERM when the parent exits, then checks it has not already gone.

    The scheduler cannot arrange this from a preexec_fn (Python code in a forked child of a
    gRPC process is unsafe), so the worker does it first thing. The SIGTERM goes through the
    same stop flag as a cancel: checkpoint, then exit. Linux only; elsewhere the broken
    event pipe stops the worker.
    """
    expected = os.environ.get(PARENT_ENV, "")
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if expected.isdigit() and _launcher_parent() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request took effect


def _launcher_parent() -> int:
    """The pid of whoever started the job: under torchrun a rank's parent is torchrun's agent, and the
    agent's parent is the server (the kernel's death signal then follows the agent, which forwards a
    SIGTERM to every rank)."""
    parent = os.getppid()
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return parent
    try:
        return int(Path(f"/proc/{parent}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return parent
