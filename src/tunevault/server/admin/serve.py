"""`tunevault serve`: the server's configuration from flags and environment, then the server itself."""

from __future__ import annotations

import argparse

from tunevault.server.app import run
from tunevault.server.config import ServerConfig, default_data_dir, parse_bytes


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        data_dir=args.data_dir or default_data_dir(), models_dir=args.models_dir,
        listen=args.listen, metrics_listen=args.metrics_listen,
        max_concurrent_jobs=args.max_concurrent_jobs, shutdown_grace_seconds=args.shutdown_grace,
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


def serve(args: argparse.Namespace) -> int:
    run(config_from(args))
    return 0
