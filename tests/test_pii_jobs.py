"""PII modes on real jobs: redact trains on placeholders, reject fails naming where, off leaves data alone."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RunningServer, wait_for_state
from tests.sealed import read_plain
from tunevault.v1 import tunevault_pb2 as pb

ROWS = [
    {"messages": [{"role": "user", "content": f"Referral for Margaret Okafor, MRN 00{4821 + n}, seen 03/14/2025 "
                                               "at 1200 Elm Street, Springfield. Itchy rash on both shins."},
                  {"role": "assistant", "content": "dermatology"}]}
    for n in range(12)
]
FAST = {"max_steps": 2, "batch_size": 2, "eval_accuracy_max_examples": 0}


def _upload(server: RunningServer, tmp_path: Path):
    path = tmp_path / "pii.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    with server.client() as client:
        return client.upload_dataset(path)


def test_redact_trains_on_placeholders_and_counts_by_type(server: RunningServer, tmp_path: Path) -> None:
    dataset = _upload(server, tmp_path)
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", FAST, pii="redact")
        done = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=600)
        assert done.state == pb.JOB_STATE_SUCCEEDED, done
        assert done.pii == pb.PII_MODE_REDACT
        event = next(e for e in client.stream_events(job.id, follow=False) if e.type == "pii")
    assert event.metrics["pii_name"] >= 12 and event.metrics["pii_mrn"] >= 12 and event.metrics["pii_date"] >= 12
    # Sealed at rest with the job's key, like everything else the worker leaves.
    scrubbed = read_plain(server.data_dir, server.data_dir / "jobs" / job.id / "scrubbed" / "train_file.jsonl").decode()
    assert "Okafor" not in scrubbed and "Elm Street" not in scrubbed and "[NAME]" in scrubbed
    assert "Okafor" not in event.message


def test_reject_fails_the_job_naming_lines_not_values(server: RunningServer, tmp_path: Path) -> None:
    dataset = _upload(server, tmp_path)
    with server.client() as client:
        job = client.create_job(dataset.id, "tiny-llama", FAST, pii="reject")
        failed = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=600)
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.error.code == "INVALID_ARGUMENT"
    assert "line 1" in failed.error.message and "NAME" in failed.error.message
    assert "Okafor" not in failed.error.message and "4821" not in failed.error.message
