"""The server process's configuration: one frozen dataclass built from flags and environment."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEVICE_MEMORY_ENV = "TUNEVAULT_DEVICE_MEMORY"  # e.g. 24GiB; unset or "auto": found at start-up


def default_data_dir() -> Path:
    """A per-user directory, as XDG says: $XDG_DATA_HOME/tunevault or ~/.local/share/tunevault."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tunevault"


def parse_bytes(text: str) -> int | None:
    """"24GiB", "24G", "512MiB" or a plain number of bytes; "auto" or "" gives None."""
    value = text.strip()
    if value.lower() in ("", "auto"):
        return None
    scales = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    number = value.rstrip("iIbB") if value[-1:].isalpha() else value
    scale = scales.get(number[-1:].lower(), 1)
    try:
        result = float(number[:-1] if scale != 1 else number) * scale
    except ValueError:
        raise ValueError(f"not a byte size: {text!r} (e.g. 24GiB, or a number of bytes)") from None
    if not 0 < result < float("inf"):
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(result)


def default_device_memory_bytes() -> int | None:
    return parse_bytes(os.environ.get(DEVICE_MEMORY_ENV, ""))


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    # None: <data_dir>/models. Separate so a read-only volume of models can be shared.
    models_dir: Path | None = None
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    # The OpenAI-compatible HTTP API (openai_gateway/); None: off.
    openai_listen: str | None = None
    # Jobs trained at once; one per GPU on a multi-GPU box.
    max_concurrent_jobs: int = 1
    # GPU indexes the scheduler hands to workers (CUDA_VISIBLE_DEVICES); empty: a CPU box, where
    # workers start as they always did. `serve --gpus` / TUNEVAULT_GPUS, else nvidia-smi -L.
    gpus: tuple[int, ...] = ()
    # Where workers run: "local" processes, or "kubernetes" Jobs (scheduler/kubernetes.py, TUNEVAULT_K8S_*).
    executor: str = "local"
    # A RUNNING job whose worker has not been heard from for this long is presumed dead.
    lease_seconds: float = 120.0
    # How long SIGTERM waits for in-flight RPCs and the worker's checkpoint before exiting.
    shutdown_grace_seconds: float = 30.0
    # How long a cancelled worker gets to stop before it is killed.
    cancel_grace_seconds: float = 20.0
    # First retry of a crashed worker after this many seconds, doubling per attempt (max 10 min).
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 600.0
    # Artifacts and checkpoints of jobs finished this many days ago are deleted (0 = keep).
    retention_days: float = 0.0
    # Memory one job may use on the training device; a job estimated above it is refused at
    # CreateJob (FAILED_PRECONDITION). None: on CPU the cgroup limit or RAM less a margin, shared
    # by max_concurrent_jobs; on a GPU host unknown (no check) until the operator sets it.
    device_memory_bytes: int | None = field(default_factory=default_device_memory_bytes)
    # Limits; exceeding one is RESOURCE_EXHAUSTED naming it.
    max_upload_bytes: int = 512 * 1024 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    max_dataset_rows: int = 1_000_000
    max_tenant_storage_bytes: int = 50 * 1024**3
    max_pending_jobs_per_tenant: int = 100
    rate_limit_per_second: float = 50.0
    rate_limit_burst: float = 200.0
    # A file holding the first admin token (a Kubernetes Secret); without it one is generated
    # and printed once on the first start.
    admin_token_file: Path | None = None
    # The master key of encryption at rest (base64 of 32 bytes). None: TUNEVAULT_MASTER_KEY or
    # TUNEVAULT_MASTER_KEY_FILE, else one generated beside the data directory (privacy/keys.py).
    master_key_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # The interpreter that runs workers: the server's own, so they see the same packages.
    python: str = sys.executable

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "tunevault.db"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id
