"""The job processes' event stream: one JSON object per line on stdout, written (EventWriter) and read (parse_line) here only.

Each event is {"type", "message", "metrics": {name: float}} plus optional extra keys (an error
carries "code", "data.prepared" the resolved "hyperparameters"). Human-readable logs go to
stderr, never here. When the reader is gone (the scheduler died and the pipe broke), writing
raises ParentGone so the worker exits promptly instead of training for nobody.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO


class ParentGone(Exception):
    """The event pipe is broken: nobody is listening any more."""


def _clean(metrics: dict[str, float]) -> dict[str, float]:
    # JSON has no NaN/inf; a metric that is not a finite number is left out rather than faked.
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


class EventWriter:
    """Writes events to a text stream (stdout in the worker) and keeps the ones worth a history."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def emit(self, event_type: str, message: str = "", metrics: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": event_type, "message": message, "metrics": _clean(metrics or {})}
        event.update(extra)
        line = json.dumps(event, separators=(",", ":"), allow_nan=False)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's own flush at exit does not raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            except (OSError, ValueError):
                pass
            finally:
                os.close(devnull)
            raise ParentGone() from None
        return event


@dataclass(frozen=True)
class Event:
    """One event line as the scheduler reads it: numeric metrics only, extra keys kept aside."""

    type: str
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_line(line: str) -> Event | None:
    """The event on one line, or None for a line that is not one (the caller logs and skips it)."""
    try:
        raw = json.loads(line)
        event_type, message = str(raw["type"]), str(raw.get("message", ""))
        metrics = dict(raw.get("metrics") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    figures = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    extra = {k: v for k, v in raw.items() if k not in ("type", "message", "metrics")}
    return Event(event_type, message, figures, extra)
