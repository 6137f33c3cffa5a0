"""The server process: wires store, scheduler, inference and gRPC together, and shuts down cleanly."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
from concurrent import futures
from importlib.metadata import PackageNotFoundError, version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tunevault.server import logs
from tunevault.server.api import reflection
from tunevault.server.api.auth import AuthInterceptor, TokenBuckets, bootstrap_admin_token
from tunevault.server.api.decoding import DecodeInterceptor
from tunevault.server.api.errors import ErrorInterceptor
from tunevault.server.api.metrics_interceptor import MetricsInterceptor
from tunevault.server.api.servicer import TuneVaultServicer, add_to_server
from tunevault.server.config import ServerConfig
from tunevault.server.inference.client import InferenceProcess
from tunevault.server.metrics import Metrics, serve_metrics
from tunevault.server.openai_gateway.gateway import Gateway, tls_context
from tunevault.server.privacy.sealing.keys import MasterKeyError, configure_server
from tunevault.server.scheduler.scheduler import Scheduler
from tunevault.server.store import Store
from tunevault.v1 import tunevault_pb2 as pb

log = logging.getLogger("tunevault.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TuneVault"].full_name


def app_version() -> str:
    try:
        return version("tunevault")
    except PackageNotFoundError:
        return "0+unknown"


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    assert config.tls_key is not None, "--tls-key is required with --tls-cert"
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None,
    )


class App:
    """Owns every long-lived part of the server and the order in which they start and stop."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        for folder in (config.data_dir, config.datasets_dir, config.jobs_dir, config.resolved_models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.database_path)
        try:
            # Before anything reads or writes a dataset: every one is sealed under this key store.
            self.keys = configure_server(config.data_dir, config.database_path, config.master_key_file)
        except MasterKeyError as error:
            raise SystemExit(f"encryption at rest: {error}") from None
        self.metrics = Metrics(self.store, app_version(), config.gpus)
        self.store.on_transition(self.metrics.job_finished)
        self.store.on_transition(self._audit_outcome)
        self.scheduler = Scheduler(config, self.store, self.metrics)
        self.inference = InferenceProcess(config.python, config.data_dir / "inference.log")
        self.health = health.HealthServicer()
        buckets = TokenBuckets(config.rate_limit_per_second, config.rate_limit_burst)
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        # Outermost first. DecodeInterceptor is innermost, so a malformed message is parsed (and
        # refused) inside the call, where the metrics and error interceptors see it.
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rpc"),
                                       interceptors=[MetricsInterceptor(self.metrics), ErrorInterceptor(),
                                                     AuthInterceptor(self.store, buckets), DecodeInterceptor()],
                                       options=options)
        servicer = TuneVaultServicer(config, self.store, self.scheduler, self.inference, app_version())
        add_to_server(servicer, self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
                          self.grpc_server)
        self.port = 0
        self.gateway: Gateway | None = None
        self._gateway_socket_dir: str | None = None

    def _audit_outcome(self, job) -> None:
        """Every job's end goes into the audit log, whoever ended it."""
        if job.state.terminal:
            details = {"state": job.state.value, "error_code": job.error_code,
                       "adapter_sha256": (job.result or {}).get("adapter_sha256")}
            self.store.append_audit(principal="system", tenant=job.tenant, action=f"job.{job.state.value.lower()}",
                                    job_id=job.id, dataset_id=job.dataset_id, details=details)

    def start(self) -> None:
        preset = self.config.admin_token_file.read_text().strip() if self.config.admin_token_file else None
        secret = bootstrap_admin_token(self.store, preset or None)
        if secret:
            # Shown once, as Jupyter does; only its hash is stored.
            print(f"\n    tunevault admin token (shown once, store it now):\n    {secret}\n", file=sys.stderr, flush=True)
        credentials = _server_credentials(self.config)
        if credentials is None:
            self.port = self.grpc_server.add_insecure_port(self.config.listen)
        else:
            self.port = self.grpc_server.add_secure_port(self.config.listen, credentials)
        if self.port == 0:
            raise SystemExit(f"cannot listen on {self.config.listen}")
        serve_metrics(self.config.metrics_listen, self.metrics.registry)
        gateway_target = self._gateway_socket() if self.config.openai_listen else None
        self.scheduler.start()
        self.grpc_server.start()
        if gateway_target is not None:
            self._start_gateway(gateway_target)
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        host = self.config.listen.rpartition(":")[0]
        log.info("tunevault %s listening on %s:%d (data %s)", app_version(), host, self.port, self.config.data_dir)

    def stop(self) -> None:
        """Health NOT_SERVING, stop taking RPCs, drain in-flight ones, checkpoint and requeue jobs."""
        grace = self.config.shutdown_grace_seconds
        log.info("shutting down (grace %.0fs)", grace)
        self.health.enter_graceful_shutdown()
        if self.gateway is not None:
            self.gateway.stop()
        drained = self.grpc_server.stop(grace)
        self.scheduler.stop(grace)
        drained.wait(grace)
        self.inference.close()
        self.keys.close()
        self.store.close()
        if self._gateway_socket_dir is not None:
            shutil.rmtree(self._gateway_socket_dir, ignore_errors=True)
        log.info("stopped")

    def _gateway_socket(self) -> str:
        """A unix socket for the OpenAI gateway's gRPC calls, in a fresh 0700 folder only this user can enter.

        Plaintext on purpose (the HTTP side has the TLS); bearer tokens are checked on it as on the port.
        """
        self._gateway_socket_dir = tempfile.mkdtemp(prefix="tunevault-gateway-")
        target = f"unix:{self._gateway_socket_dir}/grpc.sock"
        self.grpc_server.add_insecure_port(target)
        return target

    def _start_gateway(self, target: str) -> None:
        config = self.config
        assert config.openai_listen is not None
        tls = None
        if config.tls_cert:
            assert config.tls_key is not None, "--tls-key is required with --tls-cert"
            tls = tls_context(config.tls_cert, config.tls_key, config.tls_client_ca)
        try:
            self.gateway = Gateway(config.openai_listen, target, tls)
        except OSError as error:
            raise SystemExit(f"cannot listen on {config.openai_listen} (--openai-listen): {error}") from None
        self.gateway.start()
        host = config.openai_listen.rpartition(":")[0]
        log.info("OpenAI-compatible API on %s://%s:%d/v1", "https" if tls else "http", host, self.gateway.port)


SIGNAL_POLL_SECONDS = 0.5


def run(config: ServerConfig) -> None:
    """Runs until SIGTERM or SIGINT. Signal handlers only set a flag; the main thread stops."""
    logs.configure()
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    app = App(config)
    app.start()
    # Wake up now and then: a Python signal handler only runs when the main thread runs Python
    # code, and the kernel may hand SIGTERM to one of gRPC's or the scheduler's threads; an
    # untimed wait then never returns (seen once in CI: a SIGTERM ignored for 60 s).
    while not stop_requested.wait(SIGNAL_POLL_SECONDS):
        pass
    app.stop()
