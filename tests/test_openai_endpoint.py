"""The OpenAI-compatible HTTP API, driven by the real `openai` package against a real server on the tiny model.

One server and one trained job for the module (training is the slow part); every test talks to
them over HTTP exactly as an existing OpenAI app would, and compares with the gRPC answers.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.conftest import RunningServer, free_port, start_server, wait_for_state
from tests.tiny_model import triage_subset
from tunevault.v1 import tunevault_pb2 as pb

PROMPT = "Route: itchy rash on both elbows"
SYSTEM = "You route clinic notes."
JOB_NAME = "triage-router"


@dataclass
class Appliance:
    server: RunningServer
    http: str  # host:port of the OpenAI API
    job_id: str

    def sdk(self, token: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://{self.http}/v1", api_key=token or self.server.admin_token, max_retries=0,
                             timeout=300)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Appliance]:
    root = tmp_path_factory.mktemp("openai")
    http_port = free_port()
    server = start_server(root / "data", tiny_models_dir, "--openai-listen", f"127.0.0.1:{http_port}")
    try:
        with server.client() as client:
            dataset = client.upload_dataset(triage_subset(root / "train.jsonl", rows=24))
            # A high learning rate so the tiny model's answers are words, not the base's blank lines.
            job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 8, "batch_size": 4, "learning_rate": 0.05,
                                                               "eval_accuracy_max_examples": 0}, display_name=JOB_NAME)
            finished = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED", "CANCELLED"})
            assert finished.state == pb.JOB_STATE_SUCCEEDED, finished
        yield Appliance(server, f"127.0.0.1:{http_port}", job.id)
    finally:
        server.stop()


def test_the_sdk_streams_a_chat_completion_from_a_trained_adapter(appliance: Appliance) -> None:
    stream = appliance.sdk().chat.completions.create(
        model=appliance.job_id, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # pieces, not one lump
    with appliance.server.client() as client:
        grpc_answer = client.generate(PROMPT, job_id=appliance.job_id, system=SYSTEM, max_tokens=12)
    assert text == grpc_answer.text and text.strip()  # the adapter's greedy answer, whole
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == grpc_answer.completion_tokens
    assert usage.prompt_tokens == grpc_answer.prompt_tokens > 0


def test_a_whole_chat_completion_with_history_matches_grpc(appliance: Appliance) -> None:
    earlier = [("First note", "Dermatology")]
    messages = [{"role": "user", "content": earlier[0][0]}, {"role": "assistant", "content": earlier[0][1]},
                {"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    answer = appliance.sdk().chat.completions.create(model=appliance.job_id, messages=messages, max_tokens=8,
                                                     temperature=0)
    with appliance.server.client() as client:
        grpc_answer = client.generate(PROMPT, job_id=appliance.job_id, history=earlier, max_tokens=8)
    assert answer.object == "chat.completion" and answer.model == appliance.job_id
    assert answer.choices[0].message.content == grpc_answer.text
    assert answer.choices[0].finish_reason == grpc_answer.finish_reason
    assert answer.usage.total_tokens == grpc_answer.prompt_tokens + grpc_answer.completion_tokens


def test_a_jobs_name_stands_for_its_adapter(appliance: Appliance) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    by_name = appliance.sdk().chat.completions.create(model=JOB_NAME, messages=messages, max_tokens=6, temperature=0)
    by_id = appliance.sdk().chat.completions.create(model=appliance.job_id, messages=messages, max_tokens=6,
                                                    temperature=0)
    assert by_name.choices[0].message.content == by_id.choices[0].message.content
    assert by_name.model == JOB_NAME


def test_legacy_completions_continue_plain_text_on_the_base_model(appliance: Appliance) -> None:
    sdk = appliance.sdk()
    whole = sdk.completions.create(model="tiny-llama", prompt="The patient", max_tokens=6, temperature=0)
    streamed = "".join(c.choices[0].text for c in sdk.completions.create(
        model="tiny-llama", prompt="The patient", max_tokens=6, temperature=0, stream=True))
    with appliance.server.client() as client:
        grpc_answer = client.generate("The patient", base_model="tiny-llama", raw=True, max_tokens=6)
    assert whole.object == "text_completion" and whole.choices[0].text == grpc_answer.text == streamed
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6


def test_models_lists_the_base_models_and_the_callers_trained_jobs(appliance: Appliance) -> None:
    ids = {m.id for m in appliance.sdk().models.list()}
    assert {"tiny-llama", appliance.job_id} <= ids
    assert appliance.sdk().models.retrieve(appliance.job_id).id == appliance.job_id
    with pytest.raises(openai.NotFoundError):
        appliance.sdk().models.retrieve("job_00000000000000000000")


def test_tokens_roles_and_tenants_are_those_of_the_grpc_api(appliance: Appliance) -> None:
    with appliance.server.client() as client:
        viewer = client.create_token("default", "viewer").secret
        stranger = client.create_token("other-tenant", "submitter").secret
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(openai.AuthenticationError):
        appliance.sdk("tv_not-a-token").chat.completions.create(model=appliance.job_id, messages=messages)
    with pytest.raises(openai.PermissionDeniedError):
        appliance.sdk(viewer).chat.completions.create(model=appliance.job_id, messages=messages)
    with pytest.raises(openai.NotFoundError):  # another tenant's adapter does not exist for this caller
        appliance.sdk(stranger).chat.completions.create(model=appliance.job_id, messages=messages, stream=True)
    assert appliance.job_id not in {m.id for m in appliance.sdk(stranger).models.list()}
    audit = appliance.server.log()
    assert "http:127.0.0.1:" in audit  # denials name the HTTP caller, not the gateway's socket


@pytest.mark.parametrize("change, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages[1].role"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"n": 2}, "n"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_bad_requests_are_400_naming_the_param(appliance: Appliance, change: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:  # extra_body: sent as given, past the SDK's own checks
        appliance.sdk().chat.completions.create(model=appliance.job_id, messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=4, extra_body=change)
    assert caught.value.param == param, caught.value.body


def test_the_servers_own_refusals_keep_their_meaning(appliance: Appliance) -> None:
    sdk = appliance.sdk()
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="prompt: is empty") as caught:  # gRPC's INVALID_ARGUMENT
        sdk.chat.completions.create(model=appliance.job_id, messages=[{"role": "user", "content": "  "}])
    assert caught.value.param == "messages"


def test_raw_http_errors_are_json_and_a_dropped_stream_leaves_the_server_answering(appliance: Appliance) -> None:
    host, port = appliance.http.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    connection.request("POST", "/v1/chat/completions", body=b"{not json", headers={
        "Authorization": f"Bearer {appliance.server.admin_token}", "Content-Type": "application/json"})
    refused = connection.getresponse()
    assert refused.status == 400 and "not valid JSON" in json.loads(refused.read())["error"]["message"]
    # A client that reads the first event of a long answer and hangs up.
    body = json.dumps({"model": appliance.job_id, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": 200, "temperature": 0, "stream": True})
    connection.request("POST", "/v1/chat/completions", body=body, headers={
        "Authorization": f"Bearer {appliance.server.admin_token}", "Content-Type": "application/json"})
    started = connection.getresponse()
    assert started.status == 200 and started.getheader("Content-Type") == "text/event-stream"
    assert started.readline().startswith(b"data: ")
    connection.close()
    answer = appliance.sdk().chat.completions.create(model=appliance.job_id, max_tokens=4, temperature=0,
                                                     messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].message.content is not None
    assert "Traceback" not in appliance.server.log()
