"""Encryption at rest: the sealed file format, the key store (wrap, shred, rotate), and a real job leaving no plaintext."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import wait_for_state
from tunevault.server.privacy.sealing import canary_secrets, encryption, keys
from tunevault.server.privacy.sealing.encryption import (
    CHUNK_SIZE,
    MAGIC,
    TAG_BYTES,
    DecryptionError,
    SealedWriter,
    open_plain,
    sealed_output,
)
from tunevault.server.privacy.sealing.keys import (
    KeyDestroyed,
    KeyStore,
    MasterKey,
    WrongMasterKey,
)
from tunevault.server.store import Store
from tunevault.v1 import tunevault_pb2 as pb

KEY = secrets.token_bytes(32)


def _lookup(key_id: str) -> bytes:
    return KEY


def _seal(data: bytes, path: Path, chunk_size: int = 1024) -> Path:
    with path.open("wb") as out:
        writer = SealedWriter(out, "dk_test", KEY, chunk_size=chunk_size)
        for start in range(0, len(data), 700):  # writes that straddle chunk boundaries
            writer.write(data[start:start + 700])
        writer.close()
    return path


def _read(path: Path) -> bytes:
    with open_plain(path, _lookup) as handle:
        return handle.read()


def _header_length(path: Path) -> int:
    raw = path.read_bytes()
    return len(MAGIC) + 5 + raw[len(MAGIC) + 4] + 8


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 4096, 10_000])
def test_round_trip_any_size(tmp_path: Path, size: int) -> None:
    data = secrets.token_bytes(size)
    path = _seal(data, tmp_path / "f")
    assert _read(path) == data
    assert encryption.plain_size(path, _lookup) == size
    assert encryption.sealed_key_id(path) == "dk_test"


def test_random_access_reads_match_the_plaintext(tmp_path: Path) -> None:
    data = secrets.token_bytes(5000)
    path = _seal(data, tmp_path / "f")
    with open_plain(path, _lookup) as handle:
        for offset, length in ((0, 10), (1020, 10), (4999, 5), (2048, 1024), (3000, 0)):
            handle.seek(offset)
            assert handle.read(length) == data[offset:offset + length]
        handle.seek(-3, io.SEEK_END)
        assert handle.read() == data[-3:]


def test_plaintext_files_pass_through_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    assert _read(path) == b'{"a": 1}\n'
    assert not encryption.is_sealed(path)


def test_ciphertext_does_not_contain_the_plaintext(tmp_path: Path) -> None:
    data = b"Patient Zebulon Quartermaine, MRN 99-1234567\n" * 100
    path = _seal(data, tmp_path / "f")
    assert b"Zebulon" not in path.read_bytes()


def test_a_flipped_bit_anywhere_is_detected(tmp_path: Path) -> None:
    path = _seal(secrets.token_bytes(3000), tmp_path / "f")
    raw = path.read_bytes()
    for position in (len(MAGIC) + 6, _header_length(path) + 5, len(raw) - 1):  # key id, first chunk, last tag
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(DecryptionError):
            _read(path)


def test_truncation_is_detected_even_at_a_chunk_boundary(tmp_path: Path) -> None:
    path = _seal(secrets.token_bytes(3000), tmp_path / "f")
    raw = path.read_bytes()
    record = 1024 + TAG_BYTES
    header = _header_length(path)
    for cut in (header + record, header + 2 * record, len(raw) - 1, header):
        path.write_bytes(raw[:cut])
        with pytest.raises(DecryptionError):
            _read(path)


def test_reordered_or_appended_chunks_are_detected(tmp_path: Path) -> None:
    path = _seal(secrets.token_bytes(3000), tmp_path / "f")
    raw = path.read_bytes()
    header, record = _header_length(path), 1024 + TAG_BYTES
    first, second = raw[header:header + record], raw[header + record:header + 2 * record]
    path.write_bytes(raw[:header] + second + first + raw[header + 2 * record:])
    with pytest.raises(DecryptionError):
        _read(path)
    path.write_bytes(raw + raw[header:header + record])  # an extra chunk after the final one
    with pytest.raises(DecryptionError):
        _read(path)


def test_another_files_chunk_does_not_fit(tmp_path: Path) -> None:
    """Each file has its own nonce prefix (bound in the header), so chunks cannot be spliced across files."""
    a = _seal(b"a" * 3000, tmp_path / "a").read_bytes()
    b = _seal(b"b" * 3000, tmp_path / "b").read_bytes()
    header, record = _header_length(tmp_path / "a"), 1024 + TAG_BYTES
    (tmp_path / "c").write_bytes(a[:header] + b[header:header + record] + a[header + record:])
    with pytest.raises(DecryptionError):
        _read(tmp_path / "c")


def test_an_unclosed_writer_leaves_no_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), sealed_output(target, "dk_test", KEY) as writer:
        writer.write(b"x" * 5000)
        raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # A writer abandoned mid-file (a killed process) leaves no final chunk: refused.
    path = tmp_path / "partial"
    with path.open("wb") as out:
        writer = SealedWriter(out, "dk_test", KEY, chunk_size=1024)
        writer.write(b"x" * 5000)
        out.flush()
        os.fsync(out.fileno())
    with pytest.raises(DecryptionError):
        _read(path)


def test_default_chunk_size_round_trip(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_SIZE + 17)
    with sealed_output(tmp_path / "f", "dk_test", KEY) as writer:
        writer.write(data)
    assert _read(tmp_path / "f") == data


def test_seal_tree_and_unseal_tree(tmp_path: Path) -> None:
    source = tmp_path / "plain"
    (source / "sub").mkdir(parents=True)
    (source / "a.json").write_text("{}")
    (source / "sub" / "b.bin").write_bytes(b"\0" * 100)
    encryption.seal_tree(source, tmp_path / "sealed", "dk_test", KEY)
    assert all(encryption.is_sealed(p) for p in (tmp_path / "sealed").rglob("*") if p.is_file())
    encryption.unseal_tree(tmp_path / "sealed", tmp_path / "back", _lookup)
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == b"\0" * 100


# The key store ----------------------------------------------------------------------------


def _master() -> MasterKey:
    return MasterKey(secrets.token_bytes(32), "test")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    Store(tmp_path / "tunevault.db").close()  # the schema, as the server makes it
    return tmp_path / "tunevault.db"


def test_data_keys_are_stored_only_wrapped(database: Path) -> None:
    store = KeyStore(database, _master())
    key = store.create("dataset", "ds_1")
    assert store.unwrap(key.id) == key.key
    assert store.get_or_create("dataset", "ds_1") == key
    store.close()
    files = [database, Path(f"{database}-wal")]
    assert not any(key.key in f.read_bytes() for f in files if f.exists())


def test_wrong_master_key_fails_clearly(database: Path, tmp_path: Path) -> None:
    right = KeyStore(database, _master())
    key = right.create("job", "job_1")
    with sealed_output(tmp_path / "f", key.id, key.key) as writer:
        writer.write(b"secret")
    wrong = KeyStore(database, _master())
    with pytest.raises(WrongMasterKey, match=f"{key.id} is wrapped under master key {right.master.id}"):
        open_plain(tmp_path / "f", wrong.unwrap)
    # Even with a forged master_key_id the authenticated unwrap refuses.
    wrong._db.execute("UPDATE data_keys SET master_key_id = ?", [wrong.master.id])
    with pytest.raises(WrongMasterKey):
        wrong.unwrap(key.id)


def test_the_server_refuses_to_start_with_another_master_key(tmp_path: Path, tiny_models_dir: Path) -> None:
    from tests.conftest import start_server

    first = start_server(tmp_path / "data", tiny_models_dir)
    with first.client() as client:
        client.upload_dataset(_secret_dataset(tmp_path / "d.jsonl", rows=2))
    first.stop()
    other = tmp_path / "other.key"
    keys.write_key_file(other, secrets.token_bytes(32))
    second = start_server(tmp_path / "data", tiny_models_dir, "--master-key-file", str(other), wait=False)
    assert second.process.wait(60) != 0
    assert "is not the one the data keys are wrapped under (1 under mk_" in second.log()


def test_a_wrapped_key_moved_to_another_row_does_not_unwrap(database: Path) -> None:
    store = KeyStore(database, _master())
    a, b = store.create("job", "job_a"), store.create("job", "job_b")
    wrapped = store._query("SELECT wrapped FROM data_keys WHERE id = ?", [a.id])[0]["wrapped"]
    store._write("UPDATE data_keys SET wrapped = ? WHERE id = ?", [wrapped, b.id])
    with pytest.raises(WrongMasterKey):
        store.unwrap(b.id)


def test_shredding_makes_copies_undecryptable_and_leaves_no_key_bytes(database: Path, tmp_path: Path) -> None:
    store = KeyStore(database, _master())
    key = store.create("dataset", "ds_gone")
    with sealed_output(tmp_path / "f", key.id, key.key) as writer:
        writer.write(b"to be forgotten")
    backup = tmp_path / "backup"
    shutil.copy(tmp_path / "f", backup)
    wrapped = store._query("SELECT wrapped FROM data_keys WHERE id = ?", [key.id])[0]["wrapped"]
    assert store.shred("dataset", "ds_gone") == key.id
    with pytest.raises(KeyDestroyed, match="crypto-shredded"):
        open_plain(backup, store.unwrap)
    with pytest.raises(KeyDestroyed):
        store.get_or_create("dataset", "ds_gone")  # never silently a new key for the same owner
    store.close()
    files = [database, Path(f"{database}-wal")]
    assert not any(wrapped in f.read_bytes() for f in files if f.exists())


def test_canary_secrets_are_withheld_sealed_and_restored(database: Path, tmp_path: Path) -> None:
    store = KeyStore(database, _master())
    key = store.get_or_create("job", "job_1")
    given = {"canary_repetitions": [1, 4, 16], "canary_secrets": ["acct 0042-7781", "Ms. Ellery Vance"]}
    stored, withheld = canary_secrets.withhold(given)
    assert stored["canary_secrets"] == [canary_secrets.PLACEHOLDER] * 2 and withheld == given["canary_secrets"]
    assert canary_secrets.withhold({"canary_repetitions": [1]}) == ({"canary_repetitions": [1]}, [])
    with pytest.raises(ValueError, match="not a secret"):
        canary_secrets.withhold({"canary_secrets": [canary_secrets.PLACEHOLDER]})

    job_dir = tmp_path / "jobs" / "job_1"
    with pytest.raises(canary_secrets.SecretsUnavailable):
        canary_secrets.restore(stored["canary_secrets"], job_dir, store.unwrap)  # placeholders without their file
    path = canary_secrets.seal(withheld, job_dir, key)
    assert b"Ellery" not in path.read_bytes()
    assert canary_secrets.restore(stored["canary_secrets"], job_dir, store.unwrap) == tuple(withheld)
    # A plain spec (a worker run by hand) carries its secrets in the hyperparameters themselves.
    assert canary_secrets.restore(given["canary_secrets"], job_dir, None) == tuple(withheld)
    store.shred("job", "job_1")
    with pytest.raises(KeyDestroyed):
        canary_secrets.restore(stored["canary_secrets"], job_dir, store.unwrap)
    store.close()


def test_rotation_rewraps_keys_without_touching_files(database: Path, tmp_path: Path) -> None:
    old, new = _master(), _master()
    store = KeyStore(database, old)
    key = store.create("job", "job_r")
    store.create("dataset", "ds_dead")
    store.shred("dataset", "ds_dead")
    with sealed_output(tmp_path / "f", key.id, key.key) as writer:
        writer.write(b"adapter bytes")
    before = (tmp_path / "f").read_bytes()
    assert store.rotate(new) == 1
    assert (tmp_path / "f").read_bytes() == before
    assert _read_with(KeyStore(database, new), tmp_path / "f") == b"adapter bytes"
    with pytest.raises(WrongMasterKey):
        _read_with(KeyStore(database, old), tmp_path / "f")


def _read_with(store: KeyStore, path: Path) -> bytes:
    with open_plain(path, store.unwrap) as handle:
        return handle.read()


def test_rotate_command_and_key_files(tmp_path: Path, database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (keys.MASTER_KEY_ENV, keys.MASTER_KEY_FILE_ENV, keys.REQUIRE_MASTER_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    data_dir = database.parent
    current = keys.load_master_key(data_dir, allow_generate=True)  # the development default
    assert Path(current.source) == keys.default_master_key_path(data_dir)
    assert oct(os.stat(current.source).st_mode & 0o777) == "0o600"
    key = KeyStore(database, current).create("job", "job_x")
    assert keys.main(["generate", "--out", str(tmp_path / "new.key")]) == 0
    assert keys.main(["rotate", "--data-dir", str(data_dir), "--new-key-file", str(tmp_path / "new.key")]) == 0
    rotated = KeyStore(database, keys.load_master_key(key_file=tmp_path / "new.key"))
    assert rotated.unwrap(key.id) == key.key
    with pytest.raises(WrongMasterKey):
        KeyStore(database, current).unwrap(key.id)


def test_the_key_store_loads_neither_the_store_nor_sqlite_utils() -> None:
    # Workers open the key store; the Store, its migrations and sqlite_utils are the server's alone.
    probe = ("import sys, tunevault.server.privacy.sealing.keys; "
             "print(sorted(m for m in sys.modules if m == 'sqlite_utils' or m.startswith('tunevault.server.store')))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_the_key_store_never_creates_or_migrates_a_database(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyStoreMissing, match="no database"):
        KeyStore(tmp_path / "missing.db", _master())
    assert not (tmp_path / "missing.db").exists()
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(keys.KeyStoreMissing, match="no data_keys table"):
        KeyStore(tmp_path / "empty.db", _master())
    assert keys.main(["rotate", "--data-dir", str(tmp_path / "nowhere"), "--master-key-file", str(_key_file(tmp_path)),
                      "--new-key-file", str(_key_file(tmp_path))]) == 1


def _key_file(folder: Path) -> Path:
    path = folder / f"{secrets.token_hex(4)}.key"
    keys.write_key_file(path, secrets.token_bytes(32))
    return path


def test_master_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (keys.MASTER_KEY_ENV, keys.MASTER_KEY_FILE_ENV, keys.REQUIRE_MASTER_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    raw = secrets.token_bytes(32)
    monkeypatch.setenv(keys.MASTER_KEY_ENV, base64.b64encode(raw).decode())
    assert keys.load_master_key(tmp_path / "data").key == raw
    monkeypatch.setenv(keys.MASTER_KEY_ENV, "c2hvcnQ=")
    with pytest.raises(keys.MasterKeyError, match="32 bytes"):
        keys.load_master_key(tmp_path / "data")
    monkeypatch.delenv(keys.MASTER_KEY_ENV)
    monkeypatch.setenv(keys.REQUIRE_MASTER_KEY_ENV, "1")
    with pytest.raises(keys.MasterKeyError, match="no master key configured"):
        keys.load_master_key(tmp_path / "data", allow_generate=True)
    assert not keys.default_master_key_path(tmp_path / "data").exists()


# A real job through the real server ---------------------------------------------------------

SECRETS = ("Zyqhurian Blastowicz", "MRN-77Q-993817", "quokkafennel")  # distinctive enough to grep for
CANARY_SECRET = "Vexmorrow Quintal 5521"  # a memorization-audit secret: write-only, sealed like the data
SAFETENSORS_HEADER_MARKS = (b"lora_A.weight", b'"dtype":"', b"__metadata__")


def _secret_dataset(path: Path, rows: int = 24) -> Path:
    lines = []
    for index in range(rows):
        name, mrn, word = SECRETS
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"Route patient {name} ({mrn}), complaint {index}: {word} rash"},
            {"role": "assistant", "content": f"dermatology for {name}, {word}"},
        ]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _grep_data_dir(data_dir: Path) -> list[str]:
    """Every (file, needle) where a plaintext secret or safetensors header shows up under data_dir."""
    needles = [s.encode() for s in (*SECRETS, CANARY_SECRET)] + list(SAFETENSORS_HEADER_MARKS)
    found = []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        found += [f"{path.relative_to(data_dir)}: {n!r}" for n in needles if n in raw]
    return found


def test_a_real_job_leaves_no_plaintext_and_deletion_shreds_it(server, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_secret_dataset(tmp_path / "secret.jsonl"))
        assert dataset.encryption_key_id.startswith("dk_")
        job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 4, "batch_size": 2, "eval_every": 2,
                                                           "checkpoint_every": 2, "eval_accuracy_max_examples": 2,
                                                           "canary_repetitions": [2], "canary_secrets": [CANARY_SECRET]})
        assert list(job.hyperparameters.canary_secrets) == [canary_secrets.PLACEHOLDER]
        done = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=600)
        assert done.state == pb.JOB_STATE_SUCCEEDED, (done, server.log())
        planted = [e for e in client.stream_events(job.id, follow=False) if e.type == "canary"]
        assert [e.metrics["user_supplied"] for e in planted] == [1.0], "the unsealed secret was planted"
        assert done.encryption_key_id.startswith("dk_") and done.encryption_key_id != dataset.encryption_key_id
        assert client.list_checkpoints(job.id), "the sealed checkpoints are listed with their metrics"

        # 1. No plaintext of the dataset, and no readable safetensors, anywhere in the data directory.
        data_dir, job_dir = server.data_dir, server.data_dir / "jobs" / job.id
        assert (job_dir / "checkpoints" / "step-2" / "adapter_model.safetensors").is_file()
        assert _grep_data_dir(data_dir) == []
        assert not list(Path("/dev/shm").glob(f"tunevault-{job.id}-*")), "the worker's tmpfs folder is gone"

        # 2. Downloads and generation still see the plaintext adapter.
        store = KeyStore(data_dir / "tunevault.db",
                         keys.load_master_key(key_file=keys.default_master_key_path(data_dir)))
        archive = client.download_artifact(job.id, tmp_path / "adapter.tar.gz")
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("adapter_model.safetensors"))
            downloaded = tar.extractfile(member).read()
        assert downloaded == _read_with(store, job_dir / "artifacts" / "adapter_model.safetensors")
        assert struct.unpack("<Q", downloaded[:8])[0] < len(downloaded) and b"lora_A.weight" in downloaded
        assert client.generate("Route: itchy rash", job_id=job.id, max_tokens=4).completion_tokens >= 1

        # 3. The placeholder GetJob shows is refused as a secret (a copied job would audit nothing).
        with pytest.raises(grpc.RpcError) as placeholder:
            client.create_job(dataset.id, "tiny-llama", {"canary_repetitions": [1],
                                                         "canary_secrets": [canary_secrets.PLACEHOLDER]})
        assert placeholder.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hyperparameters.canary_secrets" in placeholder.value.details()

        # 4. A dataset an unfinished job needs cannot be deleted.
        waiting = client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}, not_before=time.time() + 86400)
        with pytest.raises(grpc.RpcError) as refused:
            client.delete_dataset(dataset.id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and waiting.id in refused.value.details()
        client.cancel_job(waiting.id)
        wait_for_state(client, waiting.id, {"CANCELLED"}, timeout=60)

        # 5. Backups taken before deletion are useless after it: the keys are gone.
        backup = tmp_path / "backup"
        shutil.copytree(data_dir, backup)
        deleted_job = client.delete_job(job.id)
        assert deleted_job.destroyed_key_id == done.encryption_key_id
        deleted = client.delete_dataset(dataset.id)
        assert deleted.destroyed_key_id == dataset.encryption_key_id
        assert not (data_dir / "datasets" / f"{dataset.id}.jsonl").exists()
        with pytest.raises(grpc.RpcError) as gone:
            client.get_dataset(dataset.id)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    old_files = [backup / "datasets" / f"{dataset.id}.jsonl",
                 *(p for p in (backup / "jobs" / job.id).rglob("*") if p.is_file() and encryption.is_sealed(p))]
    assert len(old_files) > 5
    for old in old_files:
        with pytest.raises(KeyDestroyed):
            _read_with(store, old)
    # Nor does the live database still hold the wrapped keys that a backup of it had.
    backup_store = KeyStore(backup / "tunevault.db", store.master)
    wrapped = [r["wrapped"] for r in backup_store._query("SELECT wrapped FROM data_keys WHERE id IN (?, ?)",
                                                            [dataset.encryption_key_id, done.encryption_key_id])]
    assert len(wrapped) == 2 and all(wrapped)
    live = [data_dir / "tunevault.db", data_dir / "tunevault.db-wal"]
    assert not any(w in f.read_bytes() for w in wrapped for f in live if f.exists())
