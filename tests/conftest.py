"""Shared fixtures: where the models are, and a real `tunevault serve` in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tunevault.client import Client

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2-135m-instruct"
EXAMPLES = REPO / "examples"


def default_models_dir() -> Path:
    return Path(os.environ.get("TUNEVAULT_TEST_MODELS_DIR", REPO / ".cache" / "models"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The shared model store holding the default model (prepared by `make model`)."""
    path = default_models_dir()
    if not (path / DEFAULT_MODEL / "config.json").is_file():
        pytest.fail(f"the default model is not prepared in {path}: run `make model`")
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A model store with a tiny random Llama (real tokenizer), for fast real 4-bit training."""
    from tests.tiny_model import make_tiny_model

    store = tmp_path_factory.mktemp("models")
    make_tiny_model(store, models_dir / DEFAULT_MODEL)
    # The default model too, linked by file so both are in one store without copying weights.
    target = store / DEFAULT_MODEL
    target.mkdir()
    for item in (models_dir / DEFAULT_MODEL).iterdir():
        os.link(item, target / item.name) if item.is_file() else None
    return store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ADMIN_TOKEN = "tv_test-admin-token-0123456789abcdef"


@dataclass
class RunningServer:
    """A real server process and how to reach it (as the bootstrap admin by default)."""

    process: subprocess.Popen
    address: str
    metrics_address: str
    data_dir: Path
    log_path: Path
    admin_token: str = ADMIN_TOKEN

    def client(self, token: str | None = None, **kwargs) -> Client:
        return Client(self.address, token=token or self.admin_token, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, models_dir: Path | None, *extra: str, wait: bool = True,
                 admin_token: str | None = ADMIN_TOKEN, port: int | None = None,
                 extra_env: dict[str, str] | None = None) -> RunningServer:
    """Starts `tunevault serve` on free ports and waits until health says SERVING.

    The first admin token comes from a file, as the Helm chart's Secret gives it; with
    admin_token=None the server generates one and prints it. extra_env is added to the server's
    environment, which its workers and inference process inherit. models_dir=None leaves out
    --models-dir, so the server picks its model store as an operator's bare `serve` would.
    """
    port, metrics_port = port or free_port(), free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    token_args: list[str] = []
    if admin_token:
        token_file = data_dir.parent / f"{data_dir.name}-admin-token"
        token_file.write_text(admin_token + "\n")
        token_args = ["--admin-token-file", str(token_file)]
    models_args = ["--models-dir", str(models_dir)] if models_dir is not None else []
    command = [sys.executable, "-m", "tunevault.client.cli", "serve", "--data-dir", str(data_dir),
               *models_args, "--listen", f"127.0.0.1:{port}",
               "--metrics-listen", f"127.0.0.1:{metrics_port}", *token_args, *extra]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(extra_env or {})})
    server = RunningServer(process, f"127.0.0.1:{port}", f"127.0.0.1:{metrics_port}", data_dir, log_path,
                           admin_token or "")
    if wait:
        wait_serving(server)
    return server


def wait_serving(server: RunningServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with Client(server.address) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
            try:
                if client.health(timeout=1) == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server did not become SERVING:\n{server.log()}")


@pytest.fixture
def server(tmp_path: Path, tiny_models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "data", tiny_models_dir)
    yield running
    running.stop()


def wait_for_state(client: Client, job_id: str, states: set[str], timeout: float = 600) -> "object":
    """Polls until the job is in one of `states` (names like "SUCCEEDED"); a bound, not a timing check."""
    from tunevault.v1 import tunevault_pb2 as pb

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if pb.JobState.Name(job.state).removeprefix("JOB_STATE_") in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {states}; last {job}")
