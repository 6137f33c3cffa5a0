"""The audit log records who did what, and any edit, deletion or swap of a row is caught and named."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_server

ROW = {"messages": [{"role": "user", "content": "Itchy rash."}, {"role": "assistant", "content": "dermatology"}]}
HOLD = time.time() + 300 * 86400


def _verify(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunevault.client.cli", "audit", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True)


@pytest.fixture
def audited(tmp_path: Path, tiny_models_dir: Path) -> Path:
    """A data directory whose audit log has entries from real RPCs; the server is stopped."""
    server = start_server(tmp_path / "data", tiny_models_dir, "--max-concurrent-jobs", "0")
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(ROW) for _ in range(4)) + "\n")
    with server.client() as client:
        dataset = client.upload_dataset(path)
        for _ in range(3):
            job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, not_before=HOLD)
            client.cancel_job(job.id)
        client.create_token("a", "viewer", "someone")
    server.stop()
    return server.data_dir


def _tamper(data_dir: Path, *statements: str) -> None:
    with sqlite3.connect(data_dir / "tunevault.db") as db:  # as an attacker with file access would
        db.execute("DROP TRIGGER IF EXISTS audit_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in statements:
            db.execute(statement)


def test_entries_say_who_did_what(audited: Path) -> None:
    with sqlite3.connect(audited / "tunevault.db") as db:
        rows = db.execute("SELECT action, principal, details FROM audit ORDER BY seq").fetchall()
    actions = [r[0] for r in rows]
    assert actions[:2] == ["UploadDataset", "CreateJob"]
    assert actions.count("CancelJob") == 3 and actions.count("job.cancelled") == 3 and "CreateToken" in actions
    assert all(r[1].startswith("tok_") or r[1] == "system" for r in rows)
    assert "sha256" in json.loads(rows[0][2]) and "dataset_sha256" in json.loads(rows[1][2])
    result = _verify(audited)
    assert result.returncode == 0 and "intact" in result.stdout


def test_the_appliance_itself_cannot_update_or_delete_entries(audited: Path) -> None:
    with sqlite3.connect(audited / "tunevault.db") as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 1")


@pytest.mark.parametrize("statements, named", [
    (["UPDATE audit SET principal = 'tok_someone_else' WHERE seq = 3"], "entry 3 was edited"),
    (["DELETE FROM audit WHERE seq = 4"], "entry 4 is missing"),
    (["UPDATE audit SET seq = 100 WHERE seq = 2", "UPDATE audit SET seq = 2 WHERE seq = 3",
      "UPDATE audit SET seq = 3 WHERE seq = 100"], "entry 2"),
    (["DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)"], "were deleted"),
])
def test_tampering_is_caught_and_named(audited: Path, statements: list[str], named: str) -> None:
    _tamper(audited, *statements)
    result = _verify(audited)
    assert result.returncode == 1 and named in result.stdout, result.stdout


def test_export_writes_every_entry_as_json(audited: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    subprocess.run([sys.executable, "-m", "tunevault.client.cli", "audit", "export", "--data-dir", str(audited),
                    "-o", str(out)], check=True, capture_output=True)
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert all({"entry_hash", "prev_hash", "content_hash", "details"} <= set(e) for e in entries)
