"""Every role and tenant pair against every RPC: the expected code, and nothing of another tenant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.conftest import start_server, wait_for_state
from tunevault.client import Client
from tunevault.v1 import tunevault_pb2 as pb

ROW = {"messages": [{"role": "user", "content": "Itchy rash on both shins."}, {"role": "assistant", "content": "dermatology"}]}
FAR_FUTURE = time.time() + 300 * 86400  # keeps a job QUEUED for the whole test


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path):
    """A server with tenants a and b, a token per role, and tenant a's dataset, queued job and finished job."""
    root = tmp_path_factory.mktemp("auth")
    server = start_server(root / "data", tiny_models_dir)
    with server.client() as admin:
        secrets = {"admin": server.admin_token}
        for tenant in ("a", "b"):
            for role in ("submitter", "viewer"):
                secrets[f"{tenant}-{role}"] = admin.create_token(tenant, role, f"{tenant} {role}").secret
    path = root / "a.jsonl"
    path.write_text("\n".join(json.dumps(ROW) for _ in range(8)) + "\n")
    with Client(server.address, token=secrets["a-submitter"]) as owner:
        dataset = owner.upload_dataset(path)
        queued = owner.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, not_before=FAR_FUTURE)
        done = owner.create_job(dataset.id, "tiny-llama", {"max_steps": 2, "eval_accuracy_max_examples": 0})
        wait_for_state(owner, done.id, {"SUCCEEDED", "FAILED"}, timeout=600)
    yield server, secrets, dataset.id, queued.id, done.id
    server.stop()


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)) and not hasattr(result, "DESCRIPTOR"):
            list(result)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def _calls(client: Client, dataset_id: str, queued_id: str, done_id: str, tmp: Path) -> dict[str, Callable]:
    upload = tmp / "up.jsonl"
    upload.write_text(json.dumps(ROW) + "\n")
    stub = client._stub
    md = client._metadata
    return {
        "UploadDataset": lambda: client.upload_dataset(upload),
        "GetDataset": lambda: client.get_dataset(dataset_id),
        "CreateJob": lambda: client.create_job(dataset_id, "tiny-llama", {"max_steps": 1}, not_before=FAR_FUTURE),
        "GetJob": lambda: client.get_job(queued_id),
        "CancelJob": lambda: client.cancel_job(queued_id),
        "PauseJob": lambda: client.pause_job(queued_id),
        "DeleteJob": lambda: client.delete_job(done_id),
        "DeleteDataset": lambda: client.delete_dataset(dataset_id),
        "ListCheckpoints": lambda: client.list_checkpoints(done_id),
        "StreamJobEvents": lambda: client.stream_events(done_id, follow=False),
        "DownloadArtifact": lambda: stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=done_id), metadata=md),
        "Generate": lambda: client.generate("hi", job_id=done_id, max_tokens=2),
        "RecordFeedback": lambda: client.record_feedback(done_id, "hi", "hello", rating=1),
        "ListFeedback": lambda: client.list_feedback(done_id),
        "ExportFeedback": lambda: client.export_feedback(done_id),
        "ListJobs": lambda: client.list_jobs(),
        "ListDatasets": lambda: client.list_datasets(),
        "ListModels": lambda: client.list_models(),
        "GetStatus": lambda: client.get_status(),
        "CreateToken": lambda: client.create_token("c", "viewer"),
        "ListTokens": lambda: client.list_tokens(),
        "RevokeToken": lambda: client.revoke_token("tok_doesnotexist0000000"),
    }


OK, NF, PD = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED
# Expected codes for the caller against tenant a's objects. PauseJob/CancelJob are OK on
# a's queued job; DeleteJob is left last so the artifact exists for the reads before it.
EXPECTED = {
    "a-viewer": {"UploadDataset": PD, "GetDataset": OK, "CreateJob": PD, "GetJob": OK, "CancelJob": PD,
                 "PauseJob": PD, "DeleteJob": PD, "DeleteDataset": PD, "ListCheckpoints": OK, "StreamJobEvents": OK,
                 "DownloadArtifact": OK, "Generate": PD, "ListJobs": OK, "ListDatasets": OK, "ListModels": OK,
                 "GetStatus": OK, "CreateToken": PD, "ListTokens": PD, "RevokeToken": PD,
                 "RecordFeedback": PD, "ListFeedback": OK, "ExportFeedback": PD},
    "b-submitter": {"UploadDataset": OK, "GetDataset": NF, "CreateJob": NF, "GetJob": NF, "CancelJob": NF,
                    "PauseJob": NF, "DeleteJob": NF, "DeleteDataset": NF, "ListCheckpoints": NF, "StreamJobEvents": NF,
                    "DownloadArtifact": NF, "Generate": NF, "ListJobs": OK, "ListDatasets": OK, "ListModels": OK,
                    "GetStatus": OK, "CreateToken": PD, "ListTokens": PD, "RevokeToken": PD,
                    "RecordFeedback": NF, "ListFeedback": NF, "ExportFeedback": NF},
    "b-viewer": {"UploadDataset": PD, "GetDataset": NF, "CreateJob": PD, "GetJob": NF, "CancelJob": PD,
                 "PauseJob": PD, "DeleteJob": PD, "DeleteDataset": PD, "ListCheckpoints": NF, "StreamJobEvents": NF,
                 "DownloadArtifact": NF, "Generate": PD, "ListJobs": OK, "ListDatasets": OK, "ListModels": OK,
                 "GetStatus": OK, "CreateToken": PD, "ListTokens": PD, "RevokeToken": PD,
                 "RecordFeedback": PD, "ListFeedback": NF, "ExportFeedback": PD},
}


@pytest.mark.parametrize("caller", sorted(EXPECTED))
def test_role_and_tenant_matrix(world, caller: str, tmp_path: Path) -> None:
    server, secrets, dataset_id, queued_id, done_id = world
    with Client(server.address, token=secrets[caller]) as client:
        calls = _calls(client, dataset_id, queued_id, done_id, tmp_path)
        got = {name: _code(call) for name, call in calls.items()}
    assert got == EXPECTED[caller]


def test_no_or_bad_token_is_unauthenticated_everywhere_but_health(world, tmp_path: Path) -> None:
    server, _, dataset_id, queued_id, done_id = world
    for token in (None, "tv_not-a-real-token"):
        with Client(server.address, token=token) as client:
            assert client.health() == "SERVING"
            for name, call in _calls(client, dataset_id, queued_id, done_id, tmp_path).items():
                assert _code(call) == grpc.StatusCode.UNAUTHENTICATED, name


def test_other_tenants_lists_and_streams_hold_nothing_of_tenant_a(world) -> None:
    server, secrets, dataset_id, queued_id, done_id = world
    with Client(server.address, token=secrets["b-submitter"]) as client:
        dumped = str(client.list_jobs()) + str(client.list_datasets()) + str(client.get_status())
    for secret_id in (dataset_id, queued_id, done_id):
        assert secret_id not in dumped
    with Client(server.address, token=secrets["a-viewer"]) as client:
        assert {j.id for j in client.list_jobs().jobs} >= {queued_id, done_id}
        assert any(e.type == "job.succeeded" for e in client.stream_events(done_id, follow=False))


def test_admin_sees_every_tenant_and_revoked_tokens_stop_working(world, tmp_path: Path) -> None:
    server, secrets, dataset_id, queued_id, done_id = world
    with server.client() as admin:
        assert admin.get_job(queued_id).id == queued_id
        assert {t.tenant for t in admin.list_tokens()} >= {"a", "b", "default"}
        spare = admin.create_token("b", "viewer", "to revoke")
        with Client(server.address, token=spare.secret) as client:
            assert client.list_jobs() is not None
            admin.revoke_token(spare.token.id)
            assert _code(client.list_jobs) == grpc.StatusCode.UNAUTHENTICATED
        assert all(spare.secret not in line for line in server.log().splitlines())


def test_tokens_are_stored_only_as_hashes(world) -> None:
    server, secrets, *_ = world
    database = (server.data_dir / "tunevault.db").read_bytes()
    wal = server.data_dir / "tunevault.db-wal"
    everything = database + (wal.read_bytes() if wal.exists() else b"")
    for secret in secrets.values():
        assert secret.encode() not in everything


def test_first_start_prints_a_generated_admin_token_once(tmp_path: Path, tiny_models_dir: Path) -> None:
    first = start_server(tmp_path / "data", tiny_models_dir, admin_token=None)
    first.stop()
    lines = [l.strip() for l in first.log().splitlines() if l.strip().startswith("tv_")]
    assert len(lines) == 1
    second = start_server(tmp_path / "data", tiny_models_dir, admin_token=None)
    try:
        with Client(second.address, token=lines[0]) as client:
            assert client.get_status().version
    finally:
        second.stop()
    assert not [l for l in second.log().splitlines() if l.strip().startswith("tv_")]
