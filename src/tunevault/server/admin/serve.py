"""`tunevault serve`: the server's configuration from flags and environment, then the server itself."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunevault.server.app import run
from tunevault.server.config import ServerConfig, default_data_dir, parse_bytes
from tunevault.server.model_store import list_models
from tunevault.server.scheduler.devices import configured_gpus
from tunevault.server.scheduler.kubernetes import settings_from_env

# Where `make model` puts the default model, relative to a checkout (the Makefile's MODELS_DIR).
CHECKOUT_MODELS_DIR = Path(".cache") / "models"


def config_from(args: argparse.Namespace) -> ServerConfig:
    # Absolute paths: workers and the inference process are other processes and may start elsewhere.
    data_dir = (args.data_dir or default_data_dir()).absolute()
    gpus = configured_gpus(args.gpus)
    if args.executor == "kubernetes":
        settings_from_env(os.environ)  # refuse to start without them, naming what is missing
    return ServerConfig(
        data_dir=data_dir, models_dir=args.models_dir.absolute() if args.models_dir else None,
        listen=args.listen, metrics_listen=args.metrics_listen, openai_listen=args.openai_listen,
        max_concurrent_jobs=max_concurrent_jobs(args.max_concurrent_jobs, gpus), gpus=gpus, executor=args.executor,
        shutdown_grace_seconds=args.shutdown_grace,
        tls_cert=args.tls_cert_file, tls_key=args.tls_key_file, tls_client_ca=args.tls_client_ca,
        lease_seconds=args.lease_seconds, retry_backoff_seconds=args.retry_backoff, retention_days=args.retention_days,
        retry_backoff_max_seconds=args.retry_backoff_max,
        admin_token_file=args.admin_token_file, master_key_file=args.master_key_file,
        rate_limit_per_second=args.rate_limit,
        rate_limit_burst=args.rate_limit_burst,
        max_pending_jobs_per_tenant=args.max_pending_jobs, max_tenant_storage_bytes=args.max_tenant_storage,
        max_upload_bytes=args.max_upload_bytes, max_dataset_rows=args.max_dataset_rows,
        device_memory_bytes=parse_bytes(args.device_memory),
    )


def max_concurrent_jobs(flag: int | None, gpus: tuple[int, ...]) -> int:
    """The flag, else one worker per GPU (one on a CPU box)."""
    return flag if flag is not None else max(1, len(gpus))


def empty_store_notice(models_dir: Path, here: Path) -> str:
    """What to do when the model store has no model: the exact commands, with this server's folder.

    Said at start-up, on the operator's terminal, because every CreateJob would fail until then.
    """
    lines = [f"the model store {models_dir} has no model yet, so no job can be created. Either:",
             f"  import the default model:  tunevault models import --models-dir {models_dir}",
             f"  or a local one:            tunevault models import PATH --name NAME --models-dir {models_dir}"]
    checkout = (here / CHECKOUT_MODELS_DIR).absolute()
    if checkout != models_dir and list_models(checkout):
        names = ", ".join(entry.name for entry in list_models(checkout))
        lines.append(f"  or serve the store `make model` prepared here ({names}):  --models-dir {checkout}")
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ValueError as error:  # a malformed --gpus or --device-memory, a missing TUNEVAULT_K8S_*: no traceback
        print(f"tunevault serve: {error}", file=sys.stderr)
        return 2
    if not list_models(config.resolved_models_dir):
        print(empty_store_notice(config.resolved_models_dir, Path.cwd()), file=sys.stderr, flush=True)
    run(config)
    return 0
