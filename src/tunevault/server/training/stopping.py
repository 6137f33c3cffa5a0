"""Cooperative stopping: the flag a SIGTERM handler sets, and the exception that unwinds the job to a checkpoint."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequested(Exception):
    """Raised at a safe point (a step boundary, between eval batches) after a stop was requested."""


class StopFlag:
    """Set from a signal handler, polled by the training loop; the handler does nothing else."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_number: int | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signal_number: int | None = None) -> None:
        self.signal_number = signal_number
        self._event.set()

    def check(self) -> None:
        """Raise StopRequested if a stop was requested."""
        if self._event.is_set():
            raise StopRequested()

    def install(self, *signals: signal.Signals) -> None:
        """Make each signal set this flag (main thread only, as Python requires)."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.request(signum)

        for sig in signals:
            signal.signal(sig, handler)
