"""TLS and mutual TLS with real handshakes; a plaintext client against a TLS server fails cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from tests.certs import make_pki
from tests.conftest import ADMIN_TOKEN, start_server
from tunevault.client import Client


def _wait_tls(address: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    with Client(address, tls_ca=ca, tls_cert=cert, tls_key=key, tls_server_name="localhost") as client:
        while time.monotonic() < deadline:
            try:
                if client.health(timeout=1) == "SERVING":
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise AssertionError("TLS server never answered health")


def test_tls_handshake_and_plaintext_refused(tmp_path: Path, tiny_models_dir: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start_server(tmp_path / "data", tiny_models_dir, "--tls-cert", str(pki.server_cert),
                          "--tls-key", str(pki.server_key), wait=False)
    try:
        _wait_tls(server.address, pki.ca)
        with Client(server.address, ADMIN_TOKEN, tls_ca=pki.ca) as client:
            assert "tiny-llama" in [m.name for m in client.list_models()]
        _assert_refused(Client(server.address, ADMIN_TOKEN))
        assert server.process.poll() is None
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, tiny_models_dir: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start_server(tmp_path / "data", tiny_models_dir, "--tls-cert", str(pki.server_cert),
                          "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca), wait=False)
    try:
        _wait_tls(server.address, pki.ca, pki.client_cert, pki.client_key)
        with Client(server.address, ADMIN_TOKEN, tls_ca=pki.ca, tls_cert=pki.client_cert,
                    tls_key=pki.client_key) as client:
            assert client.get_status().version
        _assert_refused(Client(server.address, ADMIN_TOKEN, tls_ca=pki.ca))
        assert server.process.poll() is None
    finally:
        server.stop()


def _assert_refused(client: Client) -> None:
    """The handshake fails, so the call never reaches the server: UNAVAILABLE."""
    with client, pytest.raises(grpc.RpcError) as refused:
        client.get_status()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
