"""`tunevault chat`: a conversation kept in the client, through the real CLI against a real server on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer, wait_for_state
from tests.tiny_model import triage_subset
from tunevault.client.cli import main, recent_exchanges
from tunevault.v1 import tunevault_pb2 as pb

NOTE = "Route: itchy rash on both elbows"
FOLLOW_UP = "Are you sure?"


def _chat(server: RunningServer, *args: str, lines: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunevault.client.cli", "chat", *args, "--json", "--max-tokens", "6",
               "--address", server.address, "--token", server.admin_token]
    return subprocess.run(command, input=lines, capture_output=True, text=True, timeout=300)


def _answers(run: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_chat_answers_each_turn_with_the_history_and_exits_0_on_eof(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(triage_subset(tmp_path / "train.jsonl", rows=24))
        # A high learning rate so the tiny model's answers are words, not the base's blank lines.
        job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 8, "batch_size": 4, "learning_rate": 0.05,
                                                           "eval_accuracy_max_examples": 0})
        finished = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED", "CANCELLED"})
        assert finished.state == pb.JOB_STATE_SUCCEEDED, finished

        run = _chat(server, job.id, lines=f"{NOTE}\n{FOLLOW_UP}\n")  # then EOF, as Ctrl-D
        assert run.returncode == 0, run.stderr + server.log()
        first, second = _answers(run)
        assert first["text"].strip() and second["text"].strip()
        assert [first["history_turns"], second["history_turns"]] == [0, 1]
        # What was sent: the first turn exactly as `generate` sends it, the second with the first exchange.
        assert client.generate(NOTE, job_id=job.id, max_tokens=6).text == first["text"]
        again = client.generate(FOLLOW_UP, job_id=job.id, max_tokens=6, history=[(NOTE, first["text"])])
        assert again.text == second["text"]

    again = _chat(server, job.id, lines=f"{NOTE}\n/reset\n\n{NOTE}\n/exit\n{FOLLOW_UP}\n")
    assert again.returncode == 0, again.stderr
    answers = _answers(again)
    # /reset forgets, so the note is answered as on a first turn; nothing after /exit is sent.
    assert [a["history_turns"] for a in answers] == [0, 0]
    assert [a["text"] for a in answers] == [first["text"], first["text"]]
    assert "conversation forgotten" in again.stderr


def test_a_failed_turn_is_reported_not_kept_and_the_exit_status_says_so(server: RunningServer) -> None:
    # max_tokens 0 means the default, so ask for too many instead: the server refuses the turn.
    command = [sys.executable, "-m", "tunevault.client.cli", "chat", "--base", "tiny-llama", "--json",
               "--max-tokens", "100000", "--address", server.address, "--token", server.admin_token]
    run = subprocess.run(command, input="hello\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stdout == ""
    assert "INVALID_ARGUMENT" in run.stderr and "not kept" in run.stderr


def test_a_turn_carries_the_newest_exchanges_that_fit() -> None:
    assert recent_exchanges([], "hi", 100) == []
    history = [("one", "1"), ("two", "2"), ("three", "3")]
    assert recent_exchanges(history, "four?", 10_000) == history
    assert recent_exchanges(history, "four?", 15) == [("two", "2"), ("three", "3")]  # 5 + 6 + 4 chars
    assert recent_exchanges(history, "x" * 200, 100) == []  # the new message always goes, alone if need be


def test_history_must_alternate_and_end_with_the_assistant(server: RunningServer) -> None:
    import grpc

    with server.client() as client:
        for history in ([pb.ChatTurn(role="user", content="a")],
                        [pb.ChatTurn(role="assistant", content="a"), pb.ChatTurn(role="user", content="b")]):
            request = pb.GenerateRequest(prompt="hi", base_model="tiny-llama", history=history)
            with pytest.raises(grpc.RpcError) as refused:
                client._stub.Generate(request, metadata=client._metadata, timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "history" in refused.value.details()


def test_chat_needs_a_job_or_a_base_model_but_not_both() -> None:
    for argv in (["chat"], ["chat", "job_x", "--base", "tiny-llama"]):
        with pytest.raises(SystemExit, match="either JOB or --base"):
            main(argv)
