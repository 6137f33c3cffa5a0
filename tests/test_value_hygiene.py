"""No row content in errors or logs: a refused row is named by line, field and type, never by its values.

Every bad file below hides one distinctive marker in a different kind of field (a headerless
CSV's first row, a role, a key, broken JSON, bad UTF-8, a wrong type, a cell too many...), and
a job carries it in its rows and canary secret. The marker must reach no status message and
no log file: the server's, the validator's or the worker's.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.conftest import RunningServer, wait_for_state

MARKER = "Qz9ROWSECRET"
M = MARKER
GOOD = {"messages": [{"role": "user", "content": "Itchy rash on both shins."}, {"role": "assistant", "content": "dermatology"}]}
GOOD_LINE = json.dumps(GOOD)

BAD_FILES: dict[str, bytes] = {
    "headerless.csv": f"{M} first cell,{M} second cell\n{M} a,{M} b\n".encode(),
    "role.jsonl": json.dumps({"messages": [{"role": M, "content": "x"}, {"role": "assistant", "content": "y"}]}).encode(),
    "key.jsonl": json.dumps({**GOOD, f"{M} as a key": 1}).encode(),
    "message_key.jsonl": json.dumps({"messages": [{"role": "user", "content": "x", f"{M} key": 1},
                                                  {"role": "assistant", "content": "y"}]}).encode(),
    "broken.jsonl": ('{"messages": ' + M).encode(),
    "not_utf8.jsonl": b'{"messages": "' + M.encode() + b'\xff\xfe"}',
    "wrong_type.jsonl": json.dumps({"instruction": [M], "output": "y"}).encode(),
    "content_type.jsonl": json.dumps({"messages": [{"role": "user", "content": {M: M}},
                                                   {"role": "assistant", "content": "y"}]}).encode(),
    "string_row.jsonl": json.dumps(M).encode(),
    "missing.jsonl": json.dumps({"prompt": M}).encode(),
    "mixed.jsonl": (json.dumps({"instruction": "q", "output": "a"}) + "\n"
                    + json.dumps({"prompt": M, "completion": M})).encode(),
    "cells.csv": f"instruction,output\nq,a\n{M},{M},{M}\n".encode(),
    "quote.csv": f'instruction,output\nq,a\n"{M},unclosed\n'.encode(),
    "columns.csv": f"instruction,output,{M} column\nq,a,b\n".encode(),
    "text_type.jsonl": json.dumps({"text": {M: M}}).encode(),
    "long.jsonl": json.dumps({"text": M * 200_000}).encode(),
}


def _details(call) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    return caught.value.details()


def _log_files(server: RunningServer) -> dict[str, str]:
    files = {p.name: p.read_text(errors="replace") for p in server.data_dir.rglob("*.log")}
    return {**files, "server": server.log()}


def test_no_value_of_a_bad_row_reaches_a_status_message_or_a_log(server: RunningServer, tmp_path: Path) -> None:
    messages = {}
    with server.client() as client:
        for name, content in BAD_FILES.items():
            path = tmp_path / name
            path.write_bytes(content)
            messages[name] = _details(lambda p=path: client.upload_dataset(p))

        rows = tmp_path / "rows.jsonl"
        rows.write_text("\n".join([GOOD_LINE] * 6 + [json.dumps({"messages": [
            {"role": "user", "content": f"{M} in a prompt"}, {"role": "assistant", "content": f"{M} in an answer"}]})]))
        dataset = client.upload_dataset(rows)
        base = {"max_steps": 1, "eval_accuracy_max_examples": 0}
        bad_hyperparameters = {
            "canary_secrets": {"canary_secrets": [f"{M}\nsecond line"], "canary_repetitions": [1]},
            "lr_scheduler": {"lr_scheduler": M},
            "lora_target_modules": {"lora_target_modules": [f"{M}!"]},
        }
        for name, values in bad_hyperparameters.items():
            messages[name] = _details(lambda v=values: client.create_job(dataset.id, "tiny-llama", {**base, **v}))
        # A job that validates and trains on rows (and a canary secret) holding the marker.
        job = client.create_job(dataset.id, "tiny-llama", {**base, "canary_secrets": [f"{M} canary"],
                                                           "canary_repetitions": [1]})
        finished = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"})
        messages["job"] = finished.error.message

    for name, message in messages.items():
        assert M not in message, f"{name}: {message[:300]}"
    assert "line 1" in messages["headerless.csv"] and "header" in messages["headerless.csv"]
    assert "messages[0].role" in messages["role.jsonl"] and "got another string" in messages["role.jsonl"]
    assert "line 3" in messages["cells.csv"]
    assert "canary_secrets[0]" in messages["canary_secrets"]
    for name, text in _log_files(server).items():
        assert M not in text, f"{name} holds a row value"
