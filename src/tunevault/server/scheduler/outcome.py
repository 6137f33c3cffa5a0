"""Turning a finished worker's exit status, events and log into the job's final word."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 8


@dataclass
class WorkerReport:
    """What the scheduler learnt from one worker's event stream."""

    result: dict[str, float] | None = None
    error_code: str | None = None
    error_message: str | None = None
    # trained_tokens as last reported, to count only new tokens into the metrics counter.
    last_trained_tokens: int = 0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def failure(report: WorkerReport, returncode: int, log_path: Path) -> tuple[str, str]:
    """(code, message) for a worker that did not succeed: its own error event when it sent one."""
    if report.error_message:
        return report.error_code or "INTERNAL", report.error_message
    tail = log_tail(log_path)
    if "OutOfMemoryError" in tail or "MemoryError" in tail:
        return "RESOURCE_EXHAUSTED", (f"worker ran out of memory ({describe_exit(returncode)}); "
                                      "retry with a smaller batch_size or max_seq_len")
    message = f"worker {describe_exit(returncode)}"
    if returncode == -signal.SIGKILL:
        message += " (by an operator, or by the kernel's out-of-memory killer)"
    return "INTERNAL", f"{message}; last log lines:\n{tail}" if tail else message
