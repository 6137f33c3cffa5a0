"""Which GPUs a claimed job gets: the rule, kept apart from the SQL that applies it atomically.

The rule (strict order, as Kueue's StrictFIFO): the queue's head job, by priority then age, is the only
candidate. It starts when as many of the box's devices as it needs are free, on the lowest-numbered
free ones; while it waits, no job behind it starts, even one that would fit. That wastes free GPUs
for a while, but a 4-GPU job can never be starved by a stream of 1-GPU jobs that keep slipping past
it, and every running job ends (succeeds, fails, or loses its lease), so the head always starts.
A job needing more devices than the box has can never start; the API refuses it, and a job left so
by a restart with fewer devices is failed by the scheduler rather than left blocking the queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def default_gpus(box: Sequence[int]) -> int:
    """GPUs of a job that did not say: one on a box with GPUs, none (the CPU) on a box without."""
    return 1 if box else 0


def needed(gpus: int | None, box: Sequence[int]) -> int:
    return default_gpus(box) if gpus is None else gpus


def pick(box: Sequence[int], held: Iterable[int], count: int) -> tuple[int, ...] | None:
    """The `count` lowest free devices of `box`, or None when fewer are free (the job waits)."""
    taken = set(held)
    free = [device for device in sorted(box) if device not in taken]
    return tuple(free[:count]) if len(free) >= count else None
