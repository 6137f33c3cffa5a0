"""Starting worker processes: the seam where a Kubernetes Job or torchrun executor would plug in."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from tunevault.server.scheduler.devices import visible_devices
from tunevault.server.scheduler.launch import worker_argv
from tunevault.server.scheduler.leftovers import signal_group


@dataclass
class WorkerProcess:
    """A running worker: its process, the event pipe, and the log file its stderr goes to."""

    job_id: str
    process: subprocess.Popen
    log_path: Path
    # When the scheduler first asked it to stop (cancel or pause); it is killed after a grace.
    stop_signalled_at: float | None = None

    @property
    def events(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def terminate(self) -> None:
        """Asks the worker to checkpoint and stop (SIGTERM); harmless if it already exited."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kills the worker and everything it started: under torchrun the ranks are the agent's children,
        and a rank left alive would keep its GPU after the claim has handed it to the next job."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGKILL)


class StartUnavailable(RuntimeError):
    """The place a worker runs could not take it just now (a cluster's API server down): retried later."""


class Executor(Protocol):
    """What the scheduler needs of an executor: start a job's worker, or a job's validation step."""

    def start(self, job_id: str, devices: tuple[int, ...] = ()) -> WorkerProcess: ...

    def start_validation(self, job_id: str) -> WorkerProcess: ...


class LocalProcessExecutor:
    """Runs each job as `python -m tunevault.server.worker.train` on this machine.

    On a box with GPUs (`gpu_box`), every process it starts sees only the devices its job holds
    (CUDA_VISIBLE_DEVICES; "" for a CPU job or a validation step), so two workers never share a
    device by accident. On a CPU box it sets nothing, as before.
    """

    def __init__(self, python: str, jobs_dir: Path, extra_env: dict[str, str] | None = None,
                 gpu_box: bool = False) -> None:
        self.python = python
        self.jobs_dir = jobs_dir
        self.extra_env = extra_env or {}
        self.gpu_box = gpu_box

    def start(self, job_id: str, devices: tuple[int, ...] = ()) -> WorkerProcess:
        """The training worker of one job, on `devices`; a job holding N > 1 devices runs N ranks."""
        return self._spawn("tunevault.server.worker.train", job_id, "worker.log", devices, ranks=max(1, len(devices)))

    def start_validation(self, job_id: str) -> WorkerProcess:
        """The validation process of a VALIDATING job: same events, same environment, no GPU needed."""
        return self._spawn("tunevault.server.worker.validate", job_id, "validation.log", (), ranks=1)

    def device_env(self, devices: tuple[int, ...]) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": visible_devices(devices)} if self.gpu_box else {}

    def _spawn(self, module: str, job_id: str, log_name: str, devices: tuple[int, ...], ranks: int) -> WorkerProcess:
        job_dir = self.jobs_dir / job_id
        log_path = job_dir / log_name
        # TUNEVAULT_PARENT_PID lets the worker ask the kernel for SIGTERM when this process
        # dies (prctl PDEATHSIG, set by the worker itself). No preexec_fn here: running Python
        # in a forked child of a process with gRPC threads can abort the child before exec.
        env = {**os.environ, **self.extra_env, **self.device_env(devices), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TUNEVAULT_PARENT_PID": str(os.getpid())}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                worker_argv(self.python, module, self.jobs_dir, job_id, ranks),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
                env=env, cwd=job_dir, start_new_session=True,
            )
        return WorkerProcess(job_id=job_id, process=process, log_path=log_path)
