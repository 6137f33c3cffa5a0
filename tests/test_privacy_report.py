"""`tunevault privacy-report JOB` on a real job with every privacy feature on: hashes, PII, DP, audit, keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningServer, wait_for_state
from tunevault.v1 import tunevault_pb2 as pb

ROWS = [
    {"messages": [{"role": "user", "content": f"Referral for Margaret Okafor, MRN 00{4821 + n}, seen 03/14/2025. "
                                               "Itchy rash on both shins."},
                  {"role": "assistant", "content": "dermatology"}]}
    for n in range(16)
]
PRIVATE = {"max_steps": 2, "batch_size": 4, "eval_accuracy_max_examples": 0, "dp_noise_multiplier": 1.0,
           "canary_repetitions": [2]}


def _cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunevault.client.cli", *args, "--address", server.address,
               "--token", server.admin_token]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_privacy_report_states_what_went_in_and_what_came_out(server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "pii.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    with server.client() as client:
        dataset = client.upload_dataset(path)
        job = client.create_job(dataset.id, "tiny-llama", PRIVATE, pii="redact")
        done = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=600)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done

    run = _cli(server, "privacy-report", job.id, "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["datasets"] == [{"role": "train", "id": dataset.id, "sha256": dataset.sha256, "rows": 16,
                                   "encryption_key_id": dataset.encryption_key_id}]
    assert dataset.encryption_key_id and report["encryption_key_id"] == done.encryption_key_id
    assert report["pii"]["mode"] == "redact"
    assert report["pii"]["found_by_type"]["NAME"] >= 16 and report["pii"]["found_by_type"]["MRN"] >= 16
    dp = report["differential_privacy"]
    assert dp["epsilon"] == done.result.metrics["dp_epsilon"] and dp["accountant"] == "rdp" and 0 < dp["delta"] < 1 / 16
    audit = report["memorization_audit"]
    assert [c["repetitions"] for c in audit["canaries"]] == [2]
    assert report["adapter_sha256"] == done.result.adapter_sha256 and len(report["adapter_sha256"]) == 64
    assert report["retention"].startswith("kept until deleted")

    text = _cli(server, "privacy-report", job.id)
    assert text.returncode == 0, text.stderr
    assert dataset.sha256 in text.stdout and "epsilon" in text.stdout and "canary exposure 2x" in text.stdout
    # Counts and hashes only: no value of the data is in either form of the report.
    for value in ("Okafor", "004821", "03/14/2025"):
        assert value not in run.stdout and value not in text.stdout


def _pii_line(pii: int) -> str:
    from tunevault.client import privacy_report

    job = pb.Job(id="job_x", state=pb.JOB_STATE_SUCCEEDED, pii=pii)
    report = privacy_report.build(job, [], [], retention_days=30)
    return next(line for line in privacy_report.render(report).splitlines() if line.startswith("- PII"))


def test_pii_mode_off_says_not_scanned_rather_than_none_found() -> None:
    assert _pii_line(pb.PII_MODE_OFF) == "- PII: mode off; not scanned"
    assert _pii_line(pb.PII_MODE_REDACT) == "- PII: mode redact; none found"  # scanned, and clean
