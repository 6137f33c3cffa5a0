"""Job states and the transitions allowed between them: the one place that says so."""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """A job's place in its life; the values are what the database stores."""

    VALIDATING = "VALIDATING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# to-state -> the states a job may be in to move there.
ALLOWED_FROM: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.VALIDATING, JobState.RUNNING}),  # RUNNING: requeue after a crash
    JobState.RUNNING: frozenset({JobState.QUEUED}),
    JobState.CANCELLING: frozenset({JobState.RUNNING}),
    JobState.SUCCEEDED: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.VALIDATING, JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING}),
    JobState.CANCELLED: frozenset({JobState.VALIDATING, JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING}),
}


def can_move(current: JobState, target: JobState) -> bool:
    """True when a job in `current` may move to `target`."""
    return current in ALLOWED_FROM.get(target, frozenset())
