"""Ordinary hostility is not a server error: raw bytes, abandoned uploads, refused callers, huge values.

Each case was INTERNAL (or worse) before issue 26; each now gets a client error code, is
counted in grpc_server_handled_total, leaves no ERROR line in the server log, and where a
caller was refused, leaves an audit entry and a log line naming token id, method and peer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2 as reflection

from tests.conftest import RunningServer, start_server
from tests.raw_grpc import METHODS, handled_codes, raw_call
from tunevault.client import Client
from tunevault.v1 import tunevault_pb2 as pb

ROW = {"messages": [{"role": "user", "content": "Itchy rash on both shins."}, {"role": "assistant", "content": "dermatology"}]}
GARBAGE = b"\xff" * 11  # a varint that never ends: no protobuf message parses from it
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path):
    """A server that never trains, tenant a's dataset, and tokens for tenants a and b."""
    root = tmp_path_factory.mktemp("hostile")
    server = start_server(root / "data", tiny_models_dir, "--max-concurrent-jobs", "0", "--rate-limit", "1e9")
    with server.client() as admin:
        secrets = {"a": admin.create_token("a", "submitter", "a").secret,
                   "b-viewer": admin.create_token("b", "viewer", "b").secret}
        token_ids = {t.name: t.id for t in admin._stub.ListTokens(pb.ListTokensRequest(), metadata=admin._metadata).tokens}
    path = root / "a.jsonl"
    path.write_text("\n".join(json.dumps(ROW) for _ in range(4)) + "\n")
    with Client(server.address, token=secrets["a"]) as owner:
        dataset_id = owner.upload_dataset(path).id
    yield server, secrets, token_ids, dataset_id
    server.stop()


def _bearer(secret: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {secret}"),)


def _error_lines(server: RunningServer) -> list[str]:
    return [line for line in server.log().splitlines() if '"level": "error"' in line or "Traceback" in line]


def _wait_counted(server: RunningServer, method: str, code: str) -> None:
    """Polls the metrics until the server has counted the call (it ends after the client's side does)."""
    for _ in range(300):
        if handled_codes(server)[method, code] >= 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"{method} never counted as {code}: {handled_codes(server)}")


def test_raw_bytes_to_every_method_are_invalid_argument_and_counted(live) -> None:
    server, _, _, _ = live
    with grpc.insecure_channel(server.address) as channel:
        for path, client_streaming, server_streaming in METHODS:
            code, details = raw_call(channel, path, client_streaming, server_streaming, [GARBAGE],
                                     _bearer(server.admin_token))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, code, details)
            assert "not a valid" in details
            # Without a token: refused as unauthenticated (health and reflection are open: still a bad message).
            code, _ = raw_call(channel, path, client_streaming, server_streaming, [GARBAGE])
            assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT), (path, code)
    counted = handled_codes(server)
    for path, _, _ in METHODS:
        assert counted[path.rpartition("/")[2], "INVALID_ARGUMENT"] >= 1, path
    assert not [key for key in counted if key[1] in ("INTERNAL", "UNKNOWN")], counted
    assert _error_lines(server) == []


def _stalled_upload(gate: threading.Event, started: threading.Event):
    yield pb.UploadDatasetRequest(metadata=pb.DatasetMetadata(name="stalled"))
    yield pb.UploadDatasetRequest(chunk=json.dumps(ROW).encode() + b"\n")
    started.set()
    gate.wait()  # the client stops sending here: it cancels, or its deadline passes


def test_cancelled_and_timed_out_uploads_are_client_codes_without_tracebacks(live) -> None:
    server, _, _, _ = live
    gate = threading.Event()
    try:
        with server.client() as client:
            started = threading.Event()
            call = client._stub.UploadDataset.future(_stalled_upload(gate, started), metadata=client._metadata)
            started.wait(60)
            incoming = server.data_dir / "datasets"
            for _ in range(300):  # until the server is inside the upload (its temporary file exists)
                if list(incoming.glob("*.incoming")):
                    break
                time.sleep(0.1)
            call.cancel()
            _wait_counted(server, "UploadDataset", "CANCELLED")

            with pytest.raises(grpc.RpcError) as caught:
                client._stub.UploadDataset(_stalled_upload(gate, threading.Event()), metadata=client._metadata,
                                           timeout=3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_counted(server, "UploadDataset", "DEADLINE_EXCEEDED")
    finally:
        gate.set()
    assert handled_codes(server)["UploadDataset", "INTERNAL"] == 0
    assert _error_lines(server) == []
    assert not list((server.data_dir / "datasets").glob("*.incoming"))  # nothing half-written is kept


def test_an_error_about_a_huge_value_reaches_the_client_without_it(live, tmp_path: Path) -> None:
    server, _, _, _ = live
    marker = "Hv4HUGEVALUE"
    row = {"messages": [{"role": marker * 20_000, "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with server.client() as client, pytest.raises(grpc.RpcError) as caught:
        client.upload_dataset(path)
    # Was RESOURCE_EXHAUSTED "Stream removed": the 240 KB value in the status trailer broke the stream.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 1" in caught.value.details() and "role" in caught.value.details()
    assert marker not in caught.value.details() and marker not in server.log()


def test_status_details_are_bounded() -> None:
    from tunevault.server.api.errors import MAX_DETAILS_CHARS, bounded_details

    assert bounded_details("short") == "short"
    assert len(bounded_details("x" * 500_000)) < MAX_DETAILS_CHARS + 20


def _audit_rows(server: RunningServer) -> list[dict]:
    with sqlite3.connect(f"file:{server.data_dir / 'tunevault.db'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT principal, tenant, action, details FROM audit WHERE action LIKE 'denied%'").fetchall()
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


def test_refused_and_cross_tenant_calls_are_audited_and_logged(live) -> None:
    server, secrets, token_ids, dataset_id = live
    wrong_secret = "tv_not-a-token-Qx81"
    with grpc.insecure_channel(server.address) as channel:
        stub_calls = [
            ((), pb.GetJobRequest(job_id="job_x"), "GetJob", grpc.StatusCode.UNAUTHENTICATED),
            (_bearer(wrong_secret), pb.GetJobRequest(job_id="job_x"), "GetJob", grpc.StatusCode.UNAUTHENTICATED),
            (_bearer(secrets["b-viewer"]), pb.CreateTokenRequest(tenant="b"), "CreateToken",
             grpc.StatusCode.PERMISSION_DENIED),
            (_bearer(secrets["b-viewer"]), pb.GetDatasetRequest(dataset_id=dataset_id), "GetDataset",
             grpc.StatusCode.NOT_FOUND),  # tenant a's: its existence does not leak, but the attempt is audited
        ]
        for metadata, request, method, expected in stub_calls:
            path = f"/tunevault.v1.TuneVault/{method}"
            code, _ = raw_call(channel, path, False, False, [request.SerializeToString()], metadata)
            assert code == expected, (method, code)
    rows = _audit_rows(server)
    seen = {(r["action"], r["principal"], r["details"]["method"]) for r in rows}
    b_viewer = token_ids["b"]
    assert ("denied", "anonymous", "GetJob") in seen
    assert ("denied", b_viewer, "CreateToken") in seen
    assert ("denied.cross_tenant", b_viewer, "GetDataset") in seen
    assert all(r["details"]["peer"].startswith(("ipv4:", "ipv6:")) for r in rows)
    cross = next(r for r in rows if r["action"] == "denied.cross_tenant")
    assert cross["details"]["dataset_id"] == dataset_id and cross["tenant"] == "b"
    log = server.log()
    denial_lines = [line for line in log.splitlines() if "denied" in line]
    assert any(b_viewer in line and "CreateToken" in line and "ipv4:127.0.0.1" in line for line in denial_lines)
    assert any("anonymous" in line and "GetJob" in line and "ipv4:127.0.0.1" in line for line in denial_lines)
    assert wrong_secret not in log and secrets["b-viewer"] not in log


def test_an_unauthenticated_flood_is_audited_up_to_a_cap_per_host(tmp_path: Path, tiny_models_dir: Path) -> None:
    """Refusals come before any rate limit, so each would append to the audit chain: one host gets the
    first DENIALS_AUDITED_BURST of them audited, then one a second; every call is still refused."""
    from tunevault.server.api.auth import DENIALS_AUDITED_BURST, DENIALS_AUDITED_PER_SECOND

    server = start_server(tmp_path / "data", tiny_models_dir, "--max-concurrent-jobs", "0")
    try:
        began = time.monotonic()
        with grpc.insecure_channel(server.address) as channel:
            for _ in range(int(DENIALS_AUDITED_BURST) + 60):
                code, _ = raw_call(channel, "/tunevault.v1.TuneVault/GetStatus", False, False,
                                   [pb.GetStatusRequest().SerializeToString()], ())
                assert code == grpc.StatusCode.UNAUTHENTICATED
        elapsed = time.monotonic() - began
        audited = len(_audit_rows(server))
    finally:
        server.stop()
    assert DENIALS_AUDITED_BURST <= audited <= DENIALS_AUDITED_BURST + DENIALS_AUDITED_PER_SECOND * elapsed + 1


def test_two_authorization_headers_are_refused_without_echoing_either(live) -> None:
    server, secrets, _, _ = live
    metadata = (("authorization", f"Bearer {server.admin_token}"), ("authorization", f"Bearer {secrets['a']}"))
    with grpc.insecure_channel(server.address) as channel:
        code, details = raw_call(channel, "/tunevault.v1.TuneVault/ListTokens", False, False,
                                 [pb.ListTokensRequest().SerializeToString()], metadata)
    # Was OK as the admin: the last header silently won.
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "'authorization'" in details and "2 times" in details
    assert server.admin_token not in details and secrets["a"] not in details


def _reflect(channel: grpc.Channel, path: str, *requests: reflection.ServerReflectionRequest):
    call = channel.stream_stream(path, request_serializer=reflection.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=30))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_is_served_under_v1_and_v1alpha(live, version: str) -> None:
    from google.protobuf import descriptor_pb2

    server, _, _, _ = live
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(server.address) as channel:
        # v1 and v1alpha messages are the same on the wire: the v1alpha classes encode v1 requests.
        listed, described = _reflect(channel, path, reflection.ServerReflectionRequest(list_services=""),
                                     reflection.ServerReflectionRequest(file_containing_symbol="tunevault.v1.TuneVault"))
    names = {s.name for s in listed.list_services_response.service}
    assert {"tunevault.v1.TuneVault", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    assert any(s.name == "TuneVault" for f in files for s in f.service)


def test_the_v1_reflection_descriptor_describes_itself(live) -> None:
    from google.protobuf import descriptor_pb2

    server, _, _, _ = live
    with grpc.insecure_channel(server.address) as channel:
        [answer] = _reflect(channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                            reflection.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"))
    [file] = [descriptor_pb2.FileDescriptorProto.FromString(raw)
              for raw in answer.file_descriptor_response.file_descriptor_proto]
    assert file.package == "grpc.reflection.v1" and file.name == "grpc/reflection/v1/reflection.proto"
    # Wire identity with v1alpha: same messages, same field names, numbers and types.
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection.DESCRIPTOR.CopyToProto(alpha)
    shape = lambda f: [(m.name, [(x.name, x.number, x.type, x.label, x.type_name.rpartition(".")[2])
                                 for x in m.field]) for m in f.message_type]
    assert shape(file) == shape(alpha)
