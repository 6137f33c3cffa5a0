"""The feedback loop through a real server: record, list and export feedback as DPO pairs, and what it refuses.

One tiny job is trained (a few seconds) and shared; the test that deletes it runs last.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from tests.conftest import start_server, wait_for_state
from tests.sealed import read_plain
from tests.tiny_model import triage_subset
from tunevault.client import Client
from tunevault.server.api import validation
from tunevault.server.errors import InvalidArgument
from tunevault.server.feedback import FeedbackTexts, preference_pairs
from tunevault.v1 import tunevault_pb2 as pb

FAR_FUTURE = time.time() + 300 * 86400  # keeps a job QUEUED for the whole module
# Distinctive texts, so their absence from the database file and the logs means something.
PROMPT = "Zephyrine Quillfeather, MRN 7730419, reports chest pain radiating to the left arm."
ANSWER = "Route to dermatology."
REWRITE = "Route to cardiology at once: possible acute coronary syndrome."


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path):
    """A server, tenant a's succeeded and queued jobs, and a token per caller."""
    root = tmp_path_factory.mktemp("feedback")
    server = start_server(root / "data", tiny_models_dir)
    with server.client() as admin:
        tokens = {name: admin.create_token(name[0], name[2:], name).secret
                  for name in ("a-submitter", "a-viewer", "b-submitter")}
    with Client(server.address, token=tokens["a-submitter"]) as client:
        dataset = client.upload_dataset(triage_subset(root / "train.jsonl", rows=24))
        queued = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, not_before=FAR_FUTURE)
        # A high learning rate so the tiny model's answers are words, not the base's blank lines (--generate).
        done = client.create_job(dataset.id, "tiny-llama", {"max_steps": 8, "batch_size": 4, "learning_rate": 0.05,
                                                            "eval_accuracy_max_examples": 0})
        finished = wait_for_state(client, done.id, {"SUCCEEDED", "FAILED"})
        assert finished.state == pb.JOB_STATE_SUCCEEDED, finished
    yield SimpleNamespace(server=server, tokens=tokens, job=done.id, queued=queued.id, root=root)
    server.stop()


def _client(world, who: str = "a-submitter") -> Client:
    return Client(world.server.address, token=world.tokens[who])


def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_record_list_and_export_round_trip_into_a_dataset_a_dpo_job_accepts(world) -> None:
    history = [("Triage this please.", "Send me the note.")]
    with _client(world) as client:
        job = world.job
        assert not client.list_feedback(job).feedback  # this test runs first
        rewrite = client.record_feedback(job, PROMPT, ANSWER, rating=-1, preferred_completion=REWRITE,
                                         history=history)
        assert rewrite.id.startswith("fb_") and rewrite.job_id == job
        assert (rewrite.rating, rewrite.has_rewrite, rewrite.preferred_completion) == (-1, True, REWRITE)
        assert [(t.role, t.content) for t in rewrite.history] == [("user", history[0][0]),
                                                                   ("assistant", history[0][1])]
        good = client.record_feedback(job, "Sore throat, 3 days.", "Route to ENT.", rating=1, system="Be brief.")
        bad = client.record_feedback(job, "Sore throat, 3 days.", "Route to ophthalmology.", rating=-1,
                                     system="Be brief.")
        # Same prompt, other system message: not the same conversation, so no pair with `good`.
        other = client.record_feedback(job, "Sore throat, 3 days.", "Route to neurology.", rating=-1)

        listed = client.list_feedback(job, page_size=500).feedback
        assert [f.id for f in listed] == [other.id, bad.id, good.id, rewrite.id]  # newest first
        assert (listed[3].prompt, listed[3].completion, listed[3].preferred_completion) == (PROMPT, ANSWER, REWRITE)
        assert listed[1].system == "Be brief." and listed[0].system == ""
        first = client.list_feedback(job, page_size=2)
        assert len(first.feedback) == 2 and first.next_page_token
        rest = client.list_feedback(job, page_size=500, page_token=first.next_page_token).feedback
        assert [f.id for f in first.feedback] + [f.id for f in rest] == [f.id for f in listed]

        exported = client.export_feedback(job, "triage feedback")
        assert (exported.rewrite_pairs, exported.rating_pairs) == (1, 1)
        assert exported.pair_count == exported.dataset.row_count == exported.rewrite_pairs + exported.rating_pairs
        assert exported.feedback_count == len(listed) and exported.dataset.name == "triage feedback"
        assert exported.dataset.encryption_key_id  # sealed at rest, as every upload
        assert client.get_dataset(exported.dataset.id).sha256 == exported.dataset.sha256

        path = world.server.data_dir / "datasets" / f"{exported.dataset.id}.jsonl"
        assert PROMPT.encode() not in path.read_bytes()
        rows = [json.loads(line) for line in read_plain(world.server.data_dir, path).decode().splitlines()]
        assert {"input": {"messages": [{"role": "user", "content": history[0][0]},
                                       {"role": "assistant", "content": history[0][1]},
                                       {"role": "user", "content": PROMPT}]},
                "preferred_output": [{"role": "assistant", "content": REWRITE}],
                "non_preferred_output": [{"role": "assistant", "content": ANSWER}]} in rows
        assert {"input": {"messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Sore throat, 3 days."}]},
                "preferred_output": [{"role": "assistant", "content": "Route to ENT."}],
                "non_preferred_output": [{"role": "assistant", "content": "Route to ophthalmology."}]} in rows

        dpo = client.create_job(exported.dataset.id, "tiny-llama", {"max_steps": 1}, method="dpo", pii="redact",
                                not_before=FAR_FUTURE)
        assert dpo.method == pb.TRAINING_METHOD_DPO and dpo.dataset_id == exported.dataset.id
        client.cancel_job(dpo.id)
        with pytest.raises(grpc.RpcError) as sft:
            client.create_job(exported.dataset.id, "tiny-llama", {"max_steps": 1})
        assert sft.value.code() == grpc.StatusCode.INVALID_ARGUMENT


LONG = "x" * 32_001


@pytest.mark.parametrize(("fields", "named"), [
    ({"rating": 2}, "rating"),
    ({"rating": -2}, "rating"),
    ({"rating": 0}, "rating"),  # neither a rating nor a rewrite
    ({"completion": ""}, "completion"),
    ({"completion": "  \n"}, "completion"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": LONG}, "prompt"),
    ({"completion": LONG}, "completion"),
    ({"system": LONG}, "system"),
    ({"preferred_completion": LONG}, "preferred_completion"),
    ({"preferred_completion": "   "}, "preferred_completion"),
    ({"preferred_completion": "same", "completion": "same"}, "preferred_completion"),
    ({"history": [pb.ChatTurn(role="user", content="a")]}, "history"),
    ({"history": [pb.ChatTurn(role="assistant", content="a"), pb.ChatTurn(role="user", content="b")]},
     "history[0].role"),
    ({"history": [pb.ChatTurn(role="user", content="a"), pb.ChatTurn(role="assistant", content="")]},
     "history[1].content"),
    ({"job_id": ""}, "job_id"),
])
def test_bad_feedback_is_invalid_argument_naming_the_field(world, fields: dict, named: str) -> None:
    request = pb.RecordFeedbackRequest(**{"job_id": world.job, "prompt": "p", "completion": "c", "rating": 1,
                                          **fields})
    with _client(world) as client:
        code, details = _code(lambda: client._stub.RecordFeedback(request, metadata=client._metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{named}:"), details


def test_a_lone_surrogate_is_refused_on_the_wire_and_by_the_check_naming_the_field(world) -> None:
    # A protobuf client cannot encode one; raw bytes (CESU-8 of U+D800) are not a valid message.
    good = pb.RecordFeedbackRequest(job_id=world.job, prompt="PLACEHOLDER", completion="c", rating=1)
    raw = good.SerializeToString().replace(b"PLACEHOLDER", b"PLACEHOLD\xed\xa0\x80")
    with grpc.insecure_channel(world.server.address) as channel:
        call = channel.unary_unary("/tunevault.v1.TuneVault/RecordFeedback", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            call(raw, metadata=[("authorization", f"Bearer {world.tokens['a-submitter']}")])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Any other way in (a str built in Python) meets the field check.
    request = SimpleNamespace(job_id=world.job, prompt="p", system="", history=[], completion="c\ud800", rating=1,
                              preferred_completion="")
    with pytest.raises(InvalidArgument) as checked:
        validation.feedback(request)
    assert checked.value.field == "completion"


def test_a_job_that_has_not_succeeded_is_failed_precondition(world) -> None:
    with _client(world) as client:
        code, details = _code(lambda: client.record_feedback(world.queued, "p", "c", rating=1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "SUCCEEDED" in details


def test_another_tenants_job_is_not_found_and_a_viewer_may_only_list(world) -> None:
    with _client(world, "b-submitter") as other:
        for call in (lambda: other.record_feedback(world.job, "p", "c", rating=1),
                     lambda: other.list_feedback(world.job),
                     lambda: other.export_feedback(world.job, "stolen")):
            assert _code(call)[0] == grpc.StatusCode.NOT_FOUND
    with _client(world, "a-viewer") as viewer:
        assert _code(lambda: viewer.list_feedback(world.job))[0] == grpc.StatusCode.OK
        assert _code(lambda: viewer.record_feedback(world.job, "p", "c", rating=1))[0] == \
            grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: viewer.export_feedback(world.job))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_texts_are_sealed_in_the_database_and_kept_out_of_audit_and_log(world) -> None:
    with _client(world) as client:
        client.record_feedback(world.job, PROMPT, ANSWER, rating=-1, preferred_completion=REWRITE)
    database = sorted(world.server.data_dir.glob("tunevault.db*"))
    assert database
    for path in database:  # the -wal file too: a fresh row lives there until a checkpoint
        content = path.read_bytes()
        for text in (PROMPT, REWRITE, "Zephyrine", "7730419"):
            assert text.encode() not in content, (path.name, text)
    with sqlite3.connect(world.server.data_dir / "tunevault.db") as db:
        details = [json.loads(row[0]) for row in
                   db.execute("SELECT details FROM audit WHERE action = 'RecordFeedback'").fetchall()]
    assert details and details[-1]["rating"] == -1 and details[-1]["prompt_chars"] == len(PROMPT)
    assert "Zephyrine" not in json.dumps(details) and "cardiology" not in json.dumps(details)
    assert "Zephyrine" not in world.server.log() and "cardiology" not in world.server.log()


def test_feedback_without_a_pair_is_failed_precondition_saying_what_is_missing(world, tmp_path: Path) -> None:
    # A job with no feedback yet (the shared one has pairs): tenant b trains a one-step job of its own.
    with _client(world, "b-submitter") as client:
        dataset = client.upload_dataset(triage_subset(tmp_path / "b.jsonl", rows=8))
        job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1, "eval_accuracy_max_examples": 0})
        assert wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}).state == pb.JOB_STATE_SUCCEEDED
        code, details = _code(lambda: client.export_feedback(job.id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no feedback yet" in details
        client.record_feedback(job.id, "q", "a", rating=1)
        client.record_feedback(job.id, "q", "b", rating=1)
        code, details = _code(lambda: client.export_feedback(job.id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "2 feedback entries (2 rated good, 0 rated bad, 0 with a rewrite)" in details
        client.record_feedback(job.id, "q", "c", rating=-1)
        assert client.export_feedback(job.id).rating_pairs == 2  # each good answer against the one bad


def test_pairs_use_every_rated_answer_round_robin_and_skip_contradictions() -> None:
    def texts(answer: str, rewrite: str = "", prompt: str = "q") -> FeedbackTexts:
        return FeedbackTexts(prompt=prompt, system="", history=(), completion=answer, preferred_completion=rewrite)

    pairs = preference_pairs([(1, texts("g1")), (-1, texts("b1")), (-1, texts("b2")), (-1, texts("b3")),
                              (1, texts("g1")),  # the same answer rated twice counts once
                              (1, texts("both")), (-1, texts("both")),  # contradictory: left out
                              (0, texts("x", "x")),  # a "rewrite" equal to its answer: nothing to learn
                              (-1, texts("w", "r", prompt="other"))])
    chosen = [(r["preferred_output"][0]["content"], r["non_preferred_output"][0]["content"]) for r in pairs.rows]
    assert chosen == [("r", "w"), ("g1", "b1"), ("g1", "b2"), ("g1", "b3")]
    assert (pairs.rewrite_pairs, pairs.rating_pairs) == (1, 3)


def _cli(world, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunevault.client.cli", *args, "--address", world.server.address,
               "--token", world.tokens["a-submitter"]]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_cli_add_list_export_and_submit_the_dataset_with_dpo(world, tmp_path: Path) -> None:
    rewrite_file = tmp_path / "better.txt"
    rewrite_file.write_text("Route to urgent care today.\n")
    added = _cli(world, "feedback", "add", world.job, "--prompt", "Deep cut on the palm.", "--completion",
                 "Route to dermatology.", "--bad", "--rewrite-file", str(rewrite_file))
    assert added.returncode == 0, added.stderr
    feedback_id = added.stdout.strip()
    assert feedback_id.startswith("fb_") and "rated bad, with a rewrite" in added.stderr

    generated = _cli(world, "feedback", "add", world.job, "--prompt", "Deep cut on the palm.", "--generate",
                     "--max-tokens", "4", "--good")
    assert generated.returncode == 0, generated.stderr
    assert "the adapter's answer:" in generated.stderr

    usage = _cli(world, "feedback", "add", world.job, "--prompt", "p", "--completion", "c")
    assert usage.returncode == 2 and "--good, --bad" in usage.stderr

    listed = _cli(world, "feedback", "list", world.job)
    assert listed.returncode == 0 and feedback_id in listed.stdout
    line = next(line for line in listed.stdout.splitlines() if line.startswith(feedback_id))
    assert line.split("\t")[2:] == ["bad", "rewrite", "Deep cut on the palm."]
    as_json = json.loads(_cli(world, "feedback", "list", world.job, "--json").stdout)
    entry = next(f for f in as_json["feedback"] if f["id"] == feedback_id)
    assert entry["preferred_completion"] == "Route to urgent care today."

    exported = _cli(world, "feedback", "export", world.job, "--name", "cli feedback")
    assert exported.returncode == 0, exported.stderr
    dataset_id = exported.stdout.strip()
    assert dataset_id.startswith("ds_") and "preference pair(s)" in exported.stderr
    hint = next(line for line in exported.stderr.splitlines() if line.startswith("train on it: "))
    assert f"tunevault submit --dataset {dataset_id}" in hint and "--method dpo" in hint
    # The hint runs as printed (held in the queue so the module stays fast).
    later = datetime.fromtimestamp(FAR_FUTURE).strftime("%Y-%m-%dT%H:%M")
    submitted = _cli(world, *hint.removeprefix("train on it: tunevault ").split(), "--not-before", later)
    assert submitted.returncode == 0, submitted.stderr
    with _client(world) as client:
        job = client.get_job(submitted.stdout.strip())
        assert job.method == pb.TRAINING_METHOD_DPO and job.dataset_id == dataset_id
        client.cancel_job(job.id)

    both = _cli(world, "submit", "x.jsonl", "--dataset", dataset_id, "--base-model", "tiny-llama")
    assert both.returncode == 2 and "not both" in both.stderr


def test_zz_deleting_the_job_deletes_its_feedback(world) -> None:
    """Last in the module: it deletes the shared job's files."""
    with _client(world) as client:
        assert client.list_feedback(world.job).feedback
        client.delete_job(world.job)
        assert list(client.list_feedback(world.job).feedback) == []
        code, details = _code(lambda: client.record_feedback(world.job, "p", "c", rating=1))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "deleted" in details
        code, details = _code(lambda: client.export_feedback(world.job))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no feedback yet" in details
    with sqlite3.connect(world.server.data_dir / "tunevault.db") as db:
        assert db.execute("SELECT COUNT(*) FROM feedback WHERE job_id = ?", [world.job]).fetchone() == (0,)
        entry = db.execute("SELECT details FROM audit WHERE action = 'DeleteJob' AND job_id = ?",
                           [world.job]).fetchone()
    assert json.loads(entry[0])["feedback_deleted"] >= 1
