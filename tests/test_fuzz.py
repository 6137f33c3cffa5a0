"""Hostile input against a live server: no INTERNAL or UNKNOWN, the server stays up, nothing stored changes.

Hypothesis generates thousands of random and mutated requests (fixed seed, bounded count);
below the stubs, a seeded generator sends malformed bytes to every method path and abandons
uploads part-way (cancelled, timed out), checking the client's codes, the server's
grpc_server_handled_total and its log.
The server runs with no worker slots, so accepted jobs queue instead of training.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_server, wait_for_state
from tests.raw_grpc import METHODS, TUNEVAULT, handled_codes, raw_call
from tests.sealed import read_plain
from tunevault.client import Client
from tunevault.v1 import tunevault_pb2 as pb

GOOD = {"messages": [{"role": "user", "content": "Itchy rash on both shins."}, {"role": "assistant", "content": "dermatology"}]}
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ = settings(max_examples=400, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

hostile_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["../../etc/passwd", "/etc/shadow", "..", "ds_" + "0" * 20, "job_" + "z" * 20, "\x00", "%s%n",
                     "'; DROP TABLE jobs; --", "smollm2-135m-instruct/../x", "a" * 5000, "🤖" * 50, "tiny-llama"]),
)
numbers = st.one_of(st.integers(min_value=-2**31, max_value=2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1]))
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e-308]))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path):
    root = tmp_path_factory.mktemp("fuzz")
    server = start_server(root / "data", tiny_models_dir, "--max-concurrent-jobs", "0", "--rate-limit", "1e9",
                          "--max-pending-jobs", "1000000")
    path = root / "ok.jsonl"
    path.write_text("\n".join(json.dumps(GOOD) for _ in range(6)) + "\n")
    client = server.client()
    dataset = client.upload_dataset(path)
    job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 2})
    wait_for_state(client, job.id, {"QUEUED"}, timeout=300)  # validated; no slot will ever run it
    yield server, client, dataset.id, job.id
    client.close()
    server.stop()


def _stored(server, client: Client, dataset_id: str, job_id: str) -> tuple:
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (server.data_dir / "datasets").glob("*")}
    return (client.get_dataset(dataset_id).SerializeToString(deterministic=True),
            client.get_job(job_id).SerializeToString(deterministic=True), files)


def _call(fn) -> None:
    try:
        result = fn()
        if hasattr(result, "__next__"):
            for _ in result:
                pass
    except grpc.RpcError as error:
        assert error.code() not in BAD_CODES, f"{error.code()}: {error.details()}"


hyperparameters = st.fixed_dictionaries({}, optional={
    "epochs": numbers, "max_steps": numbers, "learning_rate": doubles, "batch_size": numbers, "lora_r": numbers,
    "lora_alpha": numbers, "lora_dropout": doubles, "max_seq_len": numbers, "warmup_ratio": doubles,
    "weight_decay": doubles, "max_grad_norm": doubles, "lr_scheduler": hostile_text, "seed": numbers,
    "validation_fraction": doubles, "eval_every": numbers, "checkpoint_every": numbers,
    "lora_target_modules": st.lists(hostile_text, max_size=4),
})


def _hyperparameters(values: dict) -> pb.Hyperparameters:
    message = pb.Hyperparameters()
    for name, value in values.items():
        if name == "lora_target_modules":
            message.lora_target_modules.extend(value)
        else:
            setattr(message, name, value)
    return message


@FUZZ
@given(dataset=st.one_of(st.just(None), hostile_text), model=hostile_text, values=hyperparameters,
       key=hostile_text, priority=numbers, attempts=numbers, states=st.lists(st.integers(-5, 40), max_size=3),
       # Header values a wire can carry (the client library itself refuses control characters).
       token=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40), job=hostile_text, size=numbers, temperature=doubles)
def test_random_requests_never_break_the_server(live, dataset, model, values, key, priority, attempts, states,
                                                token, job, size, temperature) -> None:
    server, client, dataset_id, _ = live
    stub, md = client._stub, client._metadata
    request = pb.CreateJobRequest(dataset_id=dataset_id if dataset is None else dataset, base_model=model,
                                  hyperparameters=_hyperparameters(values), idempotency_key=key,
                                  priority=priority, max_attempts=attempts)
    _call(lambda: stub.CreateJob(request, metadata=md))
    _call(lambda: stub.ListJobs(pb.ListJobsRequest(states=states, page_size=size, page_token=token), metadata=md))
    by_job_id = [(stub.GetJob, pb.GetJobRequest), (stub.CancelJob, pb.CancelJobRequest),
                 (stub.PauseJob, pb.PauseJobRequest), (stub.ResumeJob, pb.ResumeJobRequest),
                 (stub.DeleteJob, pb.DeleteJobRequest), (stub.ListCheckpoints, pb.ListCheckpointsRequest),
                 (stub.DownloadArtifact, pb.DownloadArtifactRequest), (stub.ListFeedback, pb.ListFeedbackRequest),
                 (stub.ExportFeedback, pb.ExportFeedbackRequest)]
    for method, request_type in by_job_id:
        _call(lambda m=method, r=request_type: m(r(job_id=job), metadata=md))
    _call(lambda: stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id=job, no_follow=True, after_sequence=size),
                                       metadata=md))
    _call(lambda: stub.GetDataset(pb.GetDatasetRequest(dataset_id=job), metadata=md))
    _call(lambda: stub.Generate(pb.GenerateRequest(job_id=job, base_model=model, prompt=key, max_tokens=size,
                                                   temperature=temperature, top_p=temperature), metadata=md))
    _call(lambda: stub.RecordFeedback(pb.RecordFeedbackRequest(job_id=job, prompt=key, completion=model,
                                                               rating=size, preferred_completion=key),
                                      metadata=md))
    _call(lambda: stub.CreateToken(pb.CreateTokenRequest(tenant=key, role=size % 7), metadata=md))
    _call(lambda: stub.RevokeToken(pb.RevokeTokenRequest(token_id=job), metadata=md))
    _call(lambda: stub.GetJob(pb.GetJobRequest(job_id=job), metadata=(("authorization", f"Bearer {token}"),)))


def _mutate(line: bytes, data: st.DataObject) -> bytes:
    choice = data.draw(st.integers(0, 5))
    if choice == 0 and line:
        cut = data.draw(st.integers(0, len(line) - 1))
        return line[:cut]
    if choice == 1 and line:
        at = data.draw(st.integers(0, len(line) - 1))
        return line[:at] + bytes([data.draw(st.integers(0, 255))]) + line[at + 1:]
    if choice == 2:
        return json.dumps(data.draw(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                                                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                                 max_leaves=10))).encode()
    if choice == 3:
        row = json.loads(line)
        row["messages"][0]["role"] = data.draw(hostile_text)
        return json.dumps(row).encode()
    if choice == 4:
        return data.draw(st.binary(max_size=200))
    return line


@FUZZ
@given(data=st.data())
def test_mutated_datasets_are_refused_cleanly(live, data, tmp_path_factory: pytest.TempPathFactory) -> None:
    server, client, dataset_id, job_id = live
    before = _stored(server, client, dataset_id, job_id)
    lines = [json.dumps(GOOD).encode() for _ in range(data.draw(st.integers(0, 5)))]
    lines = [_mutate(line, data) for line in lines]
    path = tmp_path_factory.mktemp("up") / "d.jsonl"
    path.write_bytes(b"\n".join(lines))
    _call(lambda: client.upload_dataset(path, name=data.draw(hostile_text)))
    after = _stored(server, client, dataset_id, job_id)
    assert after[:2] == before[:2]
    assert {name: after[2].get(name) for name in before[2]} == before[2]  # new uploads may add files


def test_server_is_up_and_stored_data_unchanged_after_the_fuzz(live) -> None:
    server, client, dataset_id, job_id = live
    assert client.health() == "SERVING"
    assert server.process.poll() is None
    dataset = client.get_dataset(dataset_id)
    # Sealed at rest: the plaintext, decrypted with the server's key store, is what was uploaded.
    stored = read_plain(server.data_dir, server.data_dir / "datasets" / f"{dataset_id}.jsonl")
    assert hashlib.sha256(stored).hexdigest() == dataset.sha256
    assert client.get_job(job_id).state == pb.JOB_STATE_QUEUED
    assert "bug while serving" not in server.log()


# Below the stubs: malformed bytes to every method, and streams abandoned part-way --------

ROUNDS_PER_METHOD = 90  # x 27 method paths, plus the stream cases: over 2,000 malformed requests
STREAM_CASES = 60
BUGS = {"INTERNAL", "UNKNOWN"}


def _rich_request(path: str) -> bytes:
    """A well-formed request for the method, every string field set, as raw material to break."""
    service, _, name = path.lstrip("/").rpartition("/")
    if service != TUNEVAULT.full_name:
        return b"\x3a\x00"  # reflection's list_services="" (health ignores the unknown field)
    message = getattr(pb, TUNEVAULT.methods_by_name[name].input_type.name)()
    if name == "UploadDataset":
        message.metadata.name = "fuzz.jsonl"
    for field in message.DESCRIPTOR.fields:
        if field.type == field.TYPE_STRING and not field.is_repeated:
            setattr(message, field.name, "x" * 12)
    return message.SerializeToString()


def _malformed(rng: random.Random, valid: bytes) -> bytes:
    """Raw bytes, a truncated or corrupted message, an overlong length, a wrong wire type or bad UTF-8."""
    choice = rng.randrange(8)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if choice == 1 and len(valid) > 1:
        return valid[:rng.randrange(1, len(valid))]
    if choice == 2 and valid:
        at = rng.randrange(len(valid))
        return valid[:at] + bytes([valid[at] ^ (1 << rng.randrange(8))]) + valid[at + 1:]
    if choice == 3:
        return b"\x0a\x7f" + b"short"  # field 1 claims 127 bytes, 5 follow
    if choice == 4:
        return b"\x0d" + rng.randbytes(4)  # field 1 as fixed32 where the type says string
    if choice == 5:
        return b"\x0a\x04\xff\xfe\xfd\xfc"  # field 1 is not UTF-8
    if choice == 6:
        return b"\x0b" + rng.randbytes(3)  # a group that never ends
    return valid + b"\xff" * rng.randrange(1, 8)


def _stalled(first: bytes, gate: threading.Event, chunks: int):
    yield first
    for _ in range(chunks):
        yield pb.UploadDatasetRequest(chunk=json.dumps(GOOD).encode() + b"\n").SerializeToString()
    gate.wait()


def _abandoned_stream(channel: grpc.Channel, md, rng: random.Random, gate: threading.Event) -> str:
    """An upload cancelled or timed out part-way, or an events stream cancelled mid-follow."""
    metadata = pb.UploadDatasetRequest(metadata=pb.DatasetMetadata(name="stalled")).SerializeToString()
    upload = channel.stream_unary(f"/{TUNEVAULT.full_name}/UploadDataset", request_serializer=None,
                                  response_deserializer=None)
    case = rng.randrange(3)
    try:
        if case == 0:  # the client stops sending and its deadline passes
            upload(_stalled(metadata, gate, rng.randrange(3)), metadata=md, timeout=rng.uniform(0.2, 1.0))
        else:
            if case == 1:
                call = upload.future(_stalled(metadata, gate, rng.randrange(3)), metadata=md)
            else:
                follow = channel.unary_stream(f"/{TUNEVAULT.full_name}/StreamJobEvents", request_serializer=None,
                                              response_deserializer=None)
                call = follow(pb.StreamJobEventsRequest(job_id=_LIVE_JOB[0]).SerializeToString(), metadata=md)
            time.sleep(rng.uniform(0, 0.3))
            call.cancel()
            if case == 1:
                call.exception()
            else:
                for _ in call:
                    pass
        return "OK"
    except grpc.FutureCancelledError:
        return "CANCELLED"
    except grpc.RpcError as error:
        return error.code().name


_LIVE_JOB: list[str] = []


def test_malformed_bytes_and_abandoned_streams_never_break_the_server(live) -> None:
    server, client, _, job_id = live
    _LIVE_JOB[:] = [job_id]
    rng = random.Random(26)
    md = list(client._metadata)
    calls = []
    for path, client_streaming, server_streaming in METHODS:
        valid = _rich_request(path)
        for _ in range(ROUNDS_PER_METHOD):
            payloads = [_malformed(rng, valid)]
            if client_streaming and rng.random() < 0.5:  # a good first message, then a bad one
                payloads = [valid, *payloads]
            authorised = md if rng.random() < 0.9 else []
            calls.append((path, client_streaming, server_streaming, payloads, authorised))
    seen: Counter = Counter()
    gate = threading.Event()
    try:
        with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(8) as pool:
            for code, _ in pool.map(lambda c: raw_call(channel, *c), calls):
                seen[code.name] += 1
            streams = [random.Random(rng.random()) for _ in range(STREAM_CASES)]
            for code in pool.map(lambda r: _abandoned_stream(channel, md, r, gate), streams):
                seen[code] += 1
    finally:
        gate.set()
    print(f"\nmalformed requests sent: {len(calls) + STREAM_CASES}; codes seen by the client: {dict(seen)}")
    assert len(calls) + STREAM_CASES >= 2000
    assert not BUGS & set(seen), seen
    counted = handled_codes(server)
    print(f"grpc_server_handled_total by code: {dict(Counter({k[1]: 0 for k in counted}) + _by_code(counted))}")
    assert not [key for key in counted if key[1] in BUGS], counted
    errors = [line for line in server.log().splitlines() if '"level": "error"' in line or "Traceback" in line]
    assert errors == []
    assert client.health() == "SERVING" and server.process.poll() is None


def _by_code(counted: Counter) -> Counter:
    totals: Counter = Counter()
    for (_, code), value in counted.items():
        totals[code] += int(value)
    return totals
