"""The server's handle on the long-lived inference process (torch lives there, never here)."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunevault.server.errors import Unavailable
from tunevault.server.inference.protocol import Answer, Completion, Delta, Request

log = logging.getLogger(__name__)


class InferenceProcess:
    """Starts `python -m tunevault.server.inference.process` on first use and talks JSON lines to it.

    One request at a time (a lock): the process holds one model on one device, and
    interleaving generations would only make each slower. A dead process is restarted on
    the next request.
    """

    def __init__(self, python: str, log_path: Path) -> None:
        self.python = python
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log_file:
                self._process = subprocess.Popen(
                    [self.python, "-m", "tunevault.server.inference.process"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1, env=env,
                    start_new_session=True,
                )
        return self._process

    def generate(self, **fields: Any) -> Completion:
        """A whole completion; `fields` are Request's (base_model_dir, adapter_dir, prompt, ...)."""
        for item in self.generate_stream(stream=False, **fields):
            if isinstance(item, Completion):
                return item
        raise AssertionError("unreachable: generate_stream always ends with the completion")

    def generate_stream(self, stream: bool = True, **fields: Any) -> Iterator[str | Completion]:
        """The completion's text piece by piece as it is generated, then the Completion itself.

        The process answers one request at a time, so the lock is held until the answer line is
        read: a caller that stops early (a client that went away) still drains the rest, or the
        next request would read this one's lines.
        """
        with self._lock:
            process = self._ensure_started()
            request = Request(id=str(next(self._ids)), stream=stream, **fields)
            try:
                assert process.stdin is not None
                process.stdin.write(request.to_line())
                process.stdin.flush()
            except (BrokenPipeError, OSError) as error:
                raise Unavailable(f"the inference process stopped ({error}); retry") from error
            lines = self._answer_lines(process)
            try:
                for item in lines:
                    if isinstance(item, Delta):
                        yield item.text
                    elif item.error is not None:
                        # Requests are validated before they get here, so a failure there is a fault.
                        raise RuntimeError(f"inference failed: {item.error}")
                    else:
                        yield item.completion()
            finally:
                for _ in lines:  # the caller stopped early: read up to this request's answer
                    pass

    @staticmethod
    def _answer_lines(process: subprocess.Popen) -> Iterator[Delta | Answer]:
        """This request's delta lines, then its answer line."""
        assert process.stdout is not None
        while True:
            try:
                line = process.stdout.readline()
            except OSError as error:
                raise Unavailable(f"the inference process stopped ({error}); retry") from error
            if not line:
                raise Unavailable("the inference process exited; see inference.log; retry")
            item = Answer.parse_line(line)
            yield item
            if isinstance(item, Answer):
                return

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                assert self._process.stdin is not None
                self._process.stdin.close()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
