"""The appliance's own `tunevault` subcommands: serve, audit verify|export, models import.

Loaded by the thin client through its one seam (tunevault.client.server_commands), so this
module imports only the standard library: `tunevault serve --help` works on a client-only
install, and each handler imports the server code when it runs, saying how to install it
when the `[server]` dependencies are missing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunevault.client.server_commands import NEEDS_SERVER

MODELS_DIR_ENV = "TUNEVAULT_MODELS_DIR"


@contextmanager
def _needs_server(command: str) -> Iterator[None]:
    """Turns a missing third-party module (the `[server]` extra not installed) into the install hint."""
    try:
        yield
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] == "tunevault":
            raise  # our own module missing is a bug, not an install problem
        raise SystemExit(f"error: `{command}` {NEEDS_SERVER} (no module named {error.name!r})") from None


def cmd_serve(args: argparse.Namespace) -> int:
    with _needs_server("tunevault serve"):
        from tunevault.server.admin import serve

        return serve.serve(args)


def cmd_audit(args: argparse.Namespace) -> int:
    with _needs_server("tunevault audit"):
        from tunevault.server.admin import audit

        return audit.run(args)


def import_model(args: argparse.Namespace) -> int:
    """`tunevault models import [PATH] [--name N] --models-dir DIR`; no PATH imports the default model."""
    if not args.models_dir:
        raise SystemExit(f"error: `tunevault models import` needs --models-dir DIR (env {MODELS_DIR_ENV}): "
                         "the model store the server reads (its --models-dir, else DATA_DIR/models)")
    argv = ["--models-dir", str(args.models_dir)] + (["--name", args.name] if args.name else [])
    with _needs_server("tunevault models import"):
        from tunevault.server.training import model_import  # the standard library at load; torch when it runs

        return model_import.main(argv + ([str(args.path)] if args.path else ["--default"]))


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `serve` and `audit` to the `tunevault` command's subparsers."""
    serve = commands.add_parser("serve", help="run the appliance")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help="database, datasets and artifacts (default $XDG_DATA_HOME/tunevault)")
    serve.add_argument("--models-dir", type=Path, default=os.environ.get(MODELS_DIR_ENV),
                       help=f"model store (default DATA_DIR/models; env {MODELS_DIR_ENV}); `make model` prepares "
                            "the default model in .cache/models of the checkout")
    serve.add_argument("--listen", default="127.0.0.1:50051")
    serve.add_argument("--metrics-listen", default="127.0.0.1:9464")
    serve.add_argument("--openai-listen", default=os.environ.get("TUNEVAULT_OPENAI_LISTEN") or None,
                       help="also serve an OpenAI-compatible HTTP API here, e.g. 127.0.0.1:8000 (env "
                            "TUNEVAULT_OPENAI_LISTEN; off by default): /v1/chat/completions, /v1/completions, "
                            "/v1/models with the same bearer tokens; HTTPS with the --tls-* files")
    serve.add_argument("--max-concurrent-jobs", type=int, default=None,
                       help="jobs trained at once (default one per GPU of --gpus, 1 on a CPU box)")
    serve.add_argument("--executor", choices=["local", "kubernetes"],
                       default=os.environ.get("TUNEVAULT_EXECUTOR", "local"),
                       help="run workers as local processes, or as Kubernetes Jobs (env TUNEVAULT_EXECUTOR; "
                            "settings from TUNEVAULT_K8S_*, see docs/deploy.md)")
    serve.add_argument("--gpus", default=None,
                       help="GPU indexes to hand to workers, e.g. 0,1, or none (env TUNEVAULT_GPUS; default: what "
                            "`nvidia-smi -L` lists, none without it)")
    serve.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds SIGTERM waits to drain")
    serve.add_argument("--lease-seconds", type=float, default=120.0,
                       help="a worker silent this long is presumed dead and its job recovered")
    serve.add_argument("--retry-backoff", type=float, default=10.0,
                       help="seconds before the first retry of a crashed worker (doubles per attempt)")
    serve.add_argument("--retry-backoff-max", type=float, default=600.0, help="longest wait between retries")
    serve.add_argument("--retention-days", type=float, default=0.0,
                       help="delete artifacts of jobs finished this many days ago (0 keeps them)")
    serve.add_argument("--master-key-file", type=Path, default=None,
                       help="master key of encryption at rest, base64 of 32 bytes (env TUNEVAULT_MASTER_KEY_FILE or "
                            "TUNEVAULT_MASTER_KEY; else generated once beside the data directory)")
    serve.add_argument("--admin-token-file", type=Path, default=os.environ.get("TUNEVAULT_ADMIN_TOKEN_FILE"),
                       help="first admin token, from a file (env TUNEVAULT_ADMIN_TOKEN_FILE); "
                            "else generated and printed once")
    serve.add_argument("--rate-limit", type=float, default=50.0, help="requests per second per token")
    serve.add_argument("--rate-limit-burst", type=float, default=200.0, help="requests a token may make at once")
    serve.add_argument("--max-pending-jobs", type=int, default=100, help="unfinished jobs per tenant")
    serve.add_argument("--max-tenant-storage", type=int, default=50 * 1024**3, help="dataset bytes per tenant")
    serve.add_argument("--max-upload-bytes", type=int, default=512 * 1024**2)
    serve.add_argument("--max-dataset-rows", type=int, default=1_000_000)
    serve.add_argument("--device-memory", default=os.environ.get("TUNEVAULT_DEVICE_MEMORY", "auto"),
                       help="memory one job may use, e.g. 24GiB (auto: cgroup limit or RAM on CPU; unchecked on GPU)")
    serve.add_argument("--tls-cert", dest="tls_cert_file", type=Path)
    serve.add_argument("--tls-key", dest="tls_key_file", type=Path)
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    serve.set_defaults(handler=cmd_serve)

    audit = commands.add_parser("audit", help="verify or export the hash-chained audit log (on the appliance)")
    audit.add_argument("audit_command", choices=["verify", "export"])
    audit.add_argument("--data-dir", type=Path, help="the appliance's data directory (or a copy of it)")
    audit.add_argument("-o", "--output", type=Path, help="export: a JSONL file (default stdout)")
    audit.set_defaults(handler=cmd_audit)
