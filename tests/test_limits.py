"""Limits and quotas answer RESOURCE_EXHAUSTED naming the limit; names never escape their folders."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import RunningServer, start_server
from tunevault.client import Client

ROW = json.dumps({"messages": [{"role": "user", "content": "Itchy rash."}, {"role": "assistant", "content": "dermatology"}]})
HOLD = time.time() + 300 * 86400


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path):
    root = tmp_path_factory.mktemp("limits")
    server = start_server(root / "data", tiny_models_dir, "--max-upload-bytes", "4000", "--max-dataset-rows", "20",
                          "--max-pending-jobs", "3", "--max-tenant-storage", "7000", "--rate-limit", "5", "--rate-limit-burst", "10",
                          "--max-concurrent-jobs", "0")
    yield server, root
    server.stop()


def _file(folder: Path, rows: int, name: str = "d.jsonl") -> Path:
    path = folder / name
    path.write_text("\n".join([ROW] * rows) + "\n")
    return path


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def _patient(server: RunningServer) -> Client:
    """A client that keeps under the 5 requests/s rate limit of this server."""
    time.sleep(1.2)
    return server.client()


def test_size_rows_storage_and_pending_jobs_are_limited_by_name(limited) -> None:
    server, root = limited
    with _patient(server) as client:
        too_big = _refused(lambda: client.upload_dataset(_file(root, 60, "big.jsonl")))
        assert too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_upload_bytes" in too_big.details()
    with _patient(server) as client:
        too_many = _refused(lambda: client.upload_dataset(_file(root, 25, "rows.jsonl")))
        assert too_many.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_dataset_rows" in too_many.details()
    with _patient(server) as client:
        dataset = client.upload_dataset(_file(root, 20))
        for _ in range(3):
            client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, not_before=HOLD)
    with _patient(server) as client:
        pending = _refused(lambda: client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}))
        assert pending.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_pending_jobs_per_tenant" in pending.details()
    with _patient(server) as client:
        client.upload_dataset(_file(root, 20))
        client.upload_dataset(_file(root, 20))
    with _patient(server) as client:
        storage = _refused(lambda: client.upload_dataset(_file(root, 20)))
        assert storage.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_tenant_storage_bytes" in storage.details()


def test_request_rate_is_limited_per_token(limited) -> None:
    server, _ = limited
    with _patient(server) as client:
        codes = []
        for _ in range(40):
            try:
                client.list_models()
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code().name)
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "rate_limit_per_second" in error.details()
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes


def test_model_names_cannot_escape_the_model_store(tmp_path: Path, tiny_models_dir: Path) -> None:
    store = tmp_path / "models"
    store.mkdir()
    os.symlink(tiny_models_dir / "tiny-llama", store / "linked")  # a symlink is never followed
    os.link(tiny_models_dir / "tiny-llama" / "config.json", tmp_path / "config.json")
    server = start_server(tmp_path / "data", store)
    try:
        with server.client() as client:
            assert client.list_models() == []
            dataset = client.upload_dataset(_file(tmp_path, 4))
            for name in ("../models/tiny-llama", "/etc", "linked", "..", "tiny-llama/../..", "a" * 100):
                error = _refused(lambda name=name: client.create_job(dataset.id, name))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "base_model" in error.details(), name
    finally:
        server.stop()
