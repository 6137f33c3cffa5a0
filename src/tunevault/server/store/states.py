"""Job states and the transitions allowed between them: the one place that says so."""

from __future__ import annotations

import enum
from collections.abc import Collection


class JobState(str, enum.Enum):
    """A job's place in its life; the values are what the database stores."""

    VALIDATING = "VALIDATING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSING = "PAUSING"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# Waiting or running: a job in one of these still needs its dataset and counts against its tenant's quota.
UNFINISHED_STATES = frozenset(JobState) - TERMINAL_STATES
# States in which a worker process may be alive for the job.
WORKER_STATES = frozenset({JobState.RUNNING, JobState.PAUSING, JobState.CANCELLING})


def in_states(states: Collection[JobState]) -> tuple[str, list[str]]:
    """SQL `state IN (?, ...)` for `states`, and its parameters: a set of states is named here, never
    spelled out as literals in a query."""
    values = sorted(state.value for state in states)
    return f"state IN ({', '.join('?' * len(values))})", values


_S = JobState
# to-state -> the states a job may be in to move there.
ALLOWED_FROM: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.VALIDATING, _S.RUNNING, _S.PAUSED}),  # RUNNING: retry or requeue after a crash
    _S.RUNNING: frozenset({_S.QUEUED}),
    _S.PAUSING: frozenset({_S.RUNNING}),
    _S.PAUSED: frozenset({_S.QUEUED, _S.PAUSING}),
    _S.CANCELLING: frozenset({_S.RUNNING, _S.PAUSING}),
    _S.SUCCEEDED: frozenset({_S.RUNNING, _S.PAUSING}),
    _S.FAILED: frozenset({_S.VALIDATING, _S.QUEUED, _S.RUNNING, _S.PAUSING, _S.CANCELLING}),
    _S.CANCELLED: frozenset({_S.VALIDATING, _S.QUEUED, _S.RUNNING, _S.PAUSING, _S.PAUSED, _S.CANCELLING}),
}
