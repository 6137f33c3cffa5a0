"""The server's handle on the long-lived inference process (torch lives there, never here)."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from tunevault.server.errors import Unavailable
from tunevault.server.inference.protocol import Answer, Completion, Request

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

    def generate(self, *, base_model_dir: Path, adapter_dir: Path | None, prompt: str, system: str | None, max_tokens: int,
                 temperature: float, top_p: float, stop: list[str], history: list[dict[str, str]] | None = None) -> Completion:
        request = Request(id="", base_model_dir=base_model_dir, adapter_dir=adapter_dir, prompt=prompt, system=system,
                          max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, history=history or [])
        with self._lock:
            process = self._ensure_started()
            request = replace(request, id=str(next(self._ids)))
            try:
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(request.to_line())
                process.stdin.flush()
                line = process.stdout.readline()
            except (BrokenPipeError, OSError) as error:
                raise Unavailable(f"the inference process stopped ({error}); retry") from error
            if not line:
                raise Unavailable("the inference process exited; see inference.log; retry")
        answer = Answer.parse_line(line)
        if answer.error is not None:
            # Requests are validated before they get here, so a failure there is a fault.
            raise RuntimeError(f"inference failed: {answer.error}")
        return Completion(text=answer.text, tokens=answer.tokens)

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                assert self._process.stdin is not None
                self._process.stdin.close()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
