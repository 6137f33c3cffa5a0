"""The real server on a real port: health, reflection, validation errors, pagination, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.conftest import DEFAULT_MODEL, RunningServer
from tunevault.v1 import tunevault_pb2 as pb

GOOD_ROW = {"messages": [{"role": "user", "content": "Note: rash on both shins."},
                         {"role": "assistant", "content": "dermatology"}]}


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _grpcurl(*args: str) -> str:
    grpcurl = Path(sys.executable).parent / "grpcurl"
    return subprocess.run([str(grpcurl), "-plaintext", *args], check=True, capture_output=True, text=True).stdout


def _snapshot(server: RunningServer) -> tuple:
    with server.client() as client:
        datasets = [(d.id, d.sha256, d.row_count) for d in client.list_datasets().datasets]
        jobs = [(j.id, j.state) for j in client.list_jobs().jobs]
    files = sorted((p.name, p.read_bytes()) for p in (server.data_dir / "datasets").glob("*"))
    return datasets, jobs, files


def test_health_serves_and_reflection_lists_every_method(server: RunningServer) -> None:
    assert _grpcurl("-d", "{}", server.address, "grpc.health.v1.Health/Check").count("SERVING") == 1
    assert "tunevault.v1.TuneVault" in _grpcurl(server.address, "list").split()
    methods = _grpcurl(server.address, "list", "tunevault.v1.TuneVault").split()
    for name in ("UploadDataset", "CreateJob", "GetJob", "ListJobs", "CancelJob", "StreamJobEvents",
                 "ListModels", "DownloadArtifact", "Generate", "RecordFeedback", "ListFeedback", "ExportFeedback"):
        assert f"tunevault.v1.TuneVault.{name}" in methods
    auth = f"authorization: Bearer {server.admin_token}"
    models = json.loads(_grpcurl("-H", auth, "-d", "{}", server.address, "tunevault.v1.TuneVault/ListModels"))
    assert DEFAULT_MODEL in [m["name"] for m in models["models"]]


def test_server_process_never_loads_torch(server: RunningServer) -> None:
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps and "libc10" not in maps


def test_app_module_imports_without_torch() -> None:
    code = "import sys, tunevault.server.app, tunevault.server.contract.hyperparameters; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_upload_returns_id_sha256_and_rows(server: RunningServer, tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.jsonl", [GOOD_ROW] * 3)
    import hashlib

    with server.client() as client:
        dataset = client.upload_dataset(path)
        assert dataset.row_count == 3
        assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert client.get_dataset(dataset.id).sha256 == dataset.sha256


def test_bad_requests_are_invalid_argument_naming_the_line_or_field_and_change_nothing(
        server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_write(tmp_path / "ok.jsonl", [GOOD_ROW] * 4))
        client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, idempotency_key="first")
    before = _snapshot(server)
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as malformed:
            client.upload_dataset(_write(tmp_path / "bad.jsonl", [GOOD_ROW, GOOD_ROW, "{oops", GOOD_ROW]))
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "line 3" in malformed.value.details()

        with pytest.raises(grpc.RpcError) as unknown_model:
            client.create_job(dataset.id, "no-such-model")
        assert unknown_model.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "base_model" in unknown_model.value.details()

        with pytest.raises(grpc.RpcError) as negative_lr:
            client.create_job(dataset.id, "tiny-llama", {"learning_rate": -0.1})
        assert negative_lr.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "learning_rate" in negative_lr.value.details()

        with pytest.raises(grpc.RpcError) as missing:
            client.get_job("job_doesnotexist")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = _snapshot(server)
    assert after[0] == before[0] and after[2] == before[2]
    assert [j[0] for j in after[1]] == [j[0] for j in before[1]]


def test_idempotency_key_returns_the_same_job(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_write(tmp_path / "ok.jsonl", [GOOD_ROW] * 4))
        first = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, idempotency_key="retry-me")
        second = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, idempotency_key="retry-me")
        assert first.id == second.id
        assert len(client.list_jobs().jobs) == 1


def test_list_jobs_paginates_and_filters(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_write(tmp_path / "ok.jsonl", [GOOD_ROW] * 4))
        ids = [client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}).id for _ in range(3)]
        for job_id in ids:
            client.cancel_job(job_id) if client.get_job(job_id).state == pb.JOB_STATE_QUEUED else None
        first = client.list_jobs(page_size=2)
        rest = client.list_jobs(page_size=2, page_token=first.next_page_token)
        assert [j.id for j in first.jobs] + [j.id for j in rest.jobs] == ids[::-1]
        assert not rest.next_page_token
        with pytest.raises(grpc.RpcError) as bad_token:
            client.list_jobs(page_token="%%%")
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_finished_job_cannot_be_cancelled_and_has_no_artifact_before_success(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_write(tmp_path / "ok.jsonl", [GOOD_ROW] * 4))
        job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1})
        with pytest.raises(grpc.RpcError) as not_ready:
            list(client._stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.id), metadata=client._metadata))
        assert not_ready.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        cancelled = client.cancel_job(job.id)
        assert cancelled.state in (pb.JOB_STATE_CANCELLED, pb.JOB_STATE_CANCELLING)
        from tests.conftest import wait_for_state

        wait_for_state(client, job.id, {"CANCELLED"}, timeout=120)
        with pytest.raises(grpc.RpcError) as again:
            client.cancel_job(job.id)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CANCELLED" in again.value.details()
