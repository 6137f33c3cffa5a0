"""The key store of envelope encryption: a master key, and data keys stored only wrapped under it.

One random 256-bit data key per dataset and per job seals its files (encryption.py). Data keys
are wrapped with AES-256-GCM under the master key and kept in SQLite (table data_keys); the
master key never touches the database. Destroying a data key (crypto-shredding) makes every file
and every backup sealed with it unreadable; rotating the master key re-wraps the data keys and
leaves the files alone.

Where the master key comes from, first match wins:
  1. TUNEVAULT_MASTER_KEY: base64 of 32 bytes;
  2. a key file: --master-key-file or TUNEVAULT_MASTER_KEY_FILE (base64 text, as the Helm
     chart's Secret holds it);
  3. <data_dir>.master-key beside (not inside) the data directory, generated (0600) on the first
     start, so a development box and the tests need no set-up while a backup of the data volume
     alone still cannot decrypt it. TUNEVAULT_REQUIRE_MASTER_KEY=1 (the Helm chart sets it)
     turns generation off: a production server without its key refuses to start.

The server exports TUNEVAULT_KEYSTORE_DB and TUNEVAULT_MASTER_KEY_FILE to its own environment,
so its children (training workers, the inference process) open the same store.

    python -m tunevault.server.privacy.sealing.keys generate --out NEW.key
    python -m tunevault.server.privacy.sealing.keys rotate --data-dir DATA --new-key-file NEW.key
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunevault.server.errors import FailedPrecondition
from tunevault.server.ids import new_id
from tunevault.server.sqlite import immediate_transaction, open_connection

log = logging.getLogger(__name__)

MASTER_KEY_ENV = "TUNEVAULT_MASTER_KEY"
MASTER_KEY_FILE_ENV = "TUNEVAULT_MASTER_KEY_FILE"
REQUIRE_MASTER_KEY_ENV = "TUNEVAULT_REQUIRE_MASTER_KEY"
KEYSTORE_DB_ENV = "TUNEVAULT_KEYSTORE_DB"
KEY_BYTES = 32
OWNER_KINDS = ("dataset", "job")


class KeyUnavailable(FailedPrecondition):
    """A data key cannot be had: destroyed, unknown, or wrapped under another master key."""


class KeyDestroyed(KeyUnavailable):
    """The data key was crypto-shredded: what it sealed is gone for good."""


class WrongMasterKey(KeyUnavailable):
    """The configured master key is not the one that wrapped this data key."""


class MasterKeyError(RuntimeError):
    """No usable master key: the server must not start (or the command must not run)."""


class KeyStoreMissing(RuntimeError):
    """No key store at that path (no database, or no data_keys table): only the server's Store makes one."""


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)
    source: str  # where it came from, for logs: "env", a file path

    @property
    def id(self) -> str:
        """A fingerprint that names the key without revealing it (stored beside each wrapped key)."""
        return "mk_" + hashlib.sha256(b"tunevault master key id\0" + self.key).hexdigest()[:16]


@dataclass(frozen=True)
class DataKey:
    id: str
    key: bytes = field(repr=False)


def parse_key(text: bytes, where: str) -> bytes:
    """32 bytes from base64 text (whitespace ignored) or from the raw 32 bytes themselves."""
    stripped = text.strip()
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    if len(text) == KEY_BYTES:
        return text
    raise MasterKeyError(f"{where}: a master key must be 32 bytes, base64-encoded "
                         f"(make one with: python -m tunevault.server.privacy.sealing.keys generate --out FILE)")


def default_master_key_path(data_dir: Path) -> Path:
    return data_dir.parent / f"{data_dir.name}.master-key"


def write_key_file(path: Path, key: bytes) -> None:
    """Creates a 0600 key file holding base64 text; refuses to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(base64.b64encode(key) + b"\n")
        out.flush()
        os.fsync(out.fileno())


def load_master_key(data_dir: Path | None = None, key_file: Path | None = None, *,
                    allow_generate: bool = False) -> MasterKey:
    """The master key as the module docstring orders the sources; MasterKeyError if there is none."""
    if key_file is None and os.environ.get(MASTER_KEY_ENV):
        return MasterKey(parse_key(os.environ[MASTER_KEY_ENV].encode(), MASTER_KEY_ENV), "env")
    configured = key_file or (Path(os.environ[MASTER_KEY_FILE_ENV]) if os.environ.get(MASTER_KEY_FILE_ENV) else None)
    if configured is not None:
        try:
            return MasterKey(parse_key(configured.read_bytes(), str(configured)), str(configured))
        except OSError as error:
            raise MasterKeyError(f"cannot read the master key file {configured}: {error}") from None
    if data_dir is None:
        raise MasterKeyError(f"no master key: set {MASTER_KEY_FILE_ENV} or {MASTER_KEY_ENV}")
    path = default_master_key_path(data_dir)
    if path.is_file():
        return MasterKey(parse_key(path.read_bytes(), str(path)), str(path))
    if not allow_generate or os.environ.get(REQUIRE_MASTER_KEY_ENV, "") not in ("", "0"):
        raise MasterKeyError(f"no master key configured ({MASTER_KEY_FILE_ENV} or {MASTER_KEY_ENV}) "
                             f"and none at {path}")
    try:
        write_key_file(path, secrets.token_bytes(KEY_BYTES))
    except FileExistsError:
        pass  # another process made it first: use theirs
    except OSError as error:
        raise MasterKeyError(f"no master key configured and cannot create {path} ({error}); "
                             f"set {MASTER_KEY_FILE_ENV} to a key file") from None
    log.warning("generated a master key at %s: every dataset and adapter is encrypted under it; back it up "
                "apart from the data directory (production: give %s from a secret)", path, MASTER_KEY_FILE_ENV)
    return MasterKey(parse_key(path.read_bytes(), str(path)), str(path))


def _wrap(master: MasterKey, key_id: str, key: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    # The key id as associated data: a wrapped key copied onto another row does not unwrap.
    return nonce + AESGCM(master.key).encrypt(nonce, key, key_id.encode())


def _unwrap(master: MasterKey, key_id: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(master.key).decrypt(wrapped[:12], wrapped[12:], key_id.encode())
    except InvalidTag:
        raise WrongMasterKey(f"data key {key_id} does not unwrap under master key {master.id}") from None


class KeyStore:
    """Data keys in the data_keys table, on a connection of their own (secure_delete on).

    A plain sqlite3 connection, without the Store or sqlite_utils: training workers and the
    inference process open a KeyStore, and must neither load the server's store nor migrate the
    schema under it. The server's Store opens (and migrates) the database first (app.py).
    """

    def __init__(self, database_path: Path, master: MasterKey) -> None:
        if not database_path.is_file():  # never create a database: an empty one would hide a wrong path
            raise KeyStoreMissing(f"no database at {database_path}: the server creates it at start")
        self.master = master
        self._db = open_connection(database_path)
        self._db.row_factory = sqlite3.Row
        # Overwrite freed pages with zeros, so a shredded key leaves no bytes in the file.
        self._db.execute("PRAGMA secure_delete=ON")
        self._lock = threading.Lock()
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'data_keys'", []):
            self._db.close()
            raise KeyStoreMissing(f"{database_path} has no data_keys table: the server creates it at start "
                                  "(start the server once, or open a Store on this database)")

    def _query(self, sql: str, params: list) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, params)]

    def _write(self, sql: str, params: list) -> None:
        with immediate_transaction(self._db, self._lock):
            self._db.execute(sql, params)

    def create(self, owner_kind: str, owner_id: str) -> DataKey:
        """A fresh data key for the owner; IntegrityError if it already has one (or had one)."""
        if owner_kind not in OWNER_KINDS:
            raise ValueError(f"owner_kind must be one of {OWNER_KINDS}")
        key = DataKey(new_id("dk"), secrets.token_bytes(KEY_BYTES))
        self._write("INSERT INTO data_keys (id, owner_kind, owner_id, wrapped, master_key_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [key.id, owner_kind, owner_id, _wrap(self.master, key.id, key.key), self.master.id, time.time()])
        return key

    def get_or_create(self, owner_kind: str, owner_id: str) -> DataKey:
        """The owner's key, made on first use; KeyDestroyed after it was shredded (never a new one)."""
        found = self.for_owner(owner_kind, owner_id)
        if found is not None:
            return found
        try:
            return self.create(owner_kind, owner_id)
        except sqlite3.IntegrityError:  # made meanwhile by another process
            found = self.for_owner(owner_kind, owner_id)
            assert found is not None
            return found

    def for_owner(self, owner_kind: str, owner_id: str) -> DataKey | None:
        rows = self._query("SELECT id FROM data_keys WHERE owner_kind = ? AND owner_id = ?", [owner_kind, owner_id])
        return DataKey(rows[0]["id"], self.unwrap(rows[0]["id"])) if rows else None

    def key_id(self, owner_kind: str, owner_id: str) -> str | None:
        rows = self._query("SELECT id FROM data_keys WHERE owner_kind = ? AND owner_id = ?", [owner_kind, owner_id])
        return rows[0]["id"] if rows else None

    def unwrap(self, key_id: str) -> bytes:
        """The data key named in a sealed file's header; KeyUnavailable says why it cannot be had."""
        rows = self._query("SELECT * FROM data_keys WHERE id = ?", [key_id])
        if not rows:
            raise KeyUnavailable(f"data key {key_id} is not in this key store")
        row = rows[0]
        if row["wrapped"] is None:
            raise KeyDestroyed(f"data key {key_id} of {row['owner_kind']} {row['owner_id']} was destroyed "
                               f"(crypto-shredded); what it sealed cannot be decrypted")
        if row["master_key_id"] != self.master.id:
            raise WrongMasterKey(f"data key {key_id} is wrapped under master key {row['master_key_id']}, "
                                 f"but the configured master key is {self.master.id} ({self.master.source})")
        return _unwrap(self.master, key_id, row["wrapped"])

    def shred(self, owner_kind: str, owner_id: str) -> str | None:
        """Destroys the owner's data key; returns its id (None: it never had one). Idempotent."""
        key_id = self.key_id(owner_kind, owner_id)
        if key_id is None:
            return None
        self._write("UPDATE data_keys SET wrapped = NULL, destroyed_at = COALESCE(destroyed_at, ?) WHERE id = ?",
                    [time.time(), key_id])
        with self._lock:
            # Move the change out of the WAL and truncate it, so no old page image keeps the wrapped
            # key. Best effort: a reader holding an old snapshot delays it to a later checkpoint.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return key_id

    def rotate(self, new_master: MasterKey) -> int:
        """Re-wraps every live data key under `new_master`, in one transaction; returns how many.

        The data files are untouched: they are sealed with the data keys, which do not change.
        """
        with immediate_transaction(self._db, self._lock):
            rows = self._db.execute("SELECT id, wrapped, master_key_id FROM data_keys WHERE wrapped IS NOT NULL").fetchall()
            for row in rows:
                if row["master_key_id"] == new_master.id:
                    continue  # an interrupted earlier rotation got this one
                if row["master_key_id"] != self.master.id:
                    raise WrongMasterKey(f"data key {row['id']} is wrapped under {row['master_key_id']}, "
                                         f"neither the current ({self.master.id}) nor the new master key")
                key = _unwrap(self.master, row["id"], row["wrapped"])
                self._db.execute("UPDATE data_keys SET wrapped = ?, master_key_id = ?, rewrapped_at = ? WHERE id = ?",
                                 [_wrap(new_master, row["id"], key), new_master.id, time.time(), row["id"]])
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as in shred: no old page keeps a wrapped key
        self.master = new_master
        return len(rows)

    def foreign_master_keys(self) -> dict[str, int]:
        """Live data keys wrapped under another master key than this store's, counted by master key id."""
        rows = self._query("SELECT master_key_id, COUNT(*) AS n FROM data_keys WHERE wrapped IS NOT NULL "
                           "AND master_key_id != ? GROUP BY master_key_id", [self.master.id])
        return {r["master_key_id"]: r["n"] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


_default: KeyStore | None = None
_default_lock = threading.Lock()


def configure_server(data_dir: Path, database_path: Path, key_file: Path | None = None) -> KeyStore:
    """The server's key store (generating a development master key if allowed); children inherit it."""
    global _default
    master = load_master_key(data_dir, key_file, allow_generate=True)
    store = KeyStore(database_path, master)
    foreign = store.foreign_master_keys()
    if foreign:
        # Refuse at start-up rather than fail every read later: this is almost always a mistyped path.
        store.close()
        counts = ", ".join(f"{n} under {key_id}" for key_id, n in sorted(foreign.items()))
        raise MasterKeyError(f"the configured master key {master.id} ({master.source}) is not the one the data "
                             f"keys are wrapped under ({counts}); start with that key, or rotate to this one")
    os.environ[KEYSTORE_DB_ENV] = str(database_path)
    if master.source != "env":
        os.environ[MASTER_KEY_FILE_ENV] = master.source
    with _default_lock:
        _default = store
    log.info("encryption at rest: master key %s from %s", master.id, master.source)
    return store


def default_store() -> KeyStore:
    """This process's key store: the server's, or in a child the one its environment names."""
    global _default
    with _default_lock:
        if _default is None:
            database = os.environ.get(KEYSTORE_DB_ENV)
            if not database:
                raise MasterKeyError(f"no key store: {KEYSTORE_DB_ENV} is not set (the server sets it for its children)")
            _default = KeyStore(Path(database), load_master_key())
        return _default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tunevault master key: generate one, or rotate to a new one")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write a new random master key file (0600)")
    generate.add_argument("--out", type=Path, required=True)
    rotate = commands.add_parser("rotate", help="re-wrap every data key under a new master key (stop the server first)")
    rotate.add_argument("--data-dir", type=Path, required=True, help="the appliance's data directory")
    rotate.add_argument("--master-key-file", type=Path, help="the current master key (default: as the server finds it)")
    rotate.add_argument("--new-key-file", type=Path, required=True, help="the new master key (see `generate`)")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            write_key_file(args.out, secrets.token_bytes(KEY_BYTES))
            print(f"wrote {args.out} (master key {load_master_key(key_file=args.out).id})")
            return 0
        current = load_master_key(args.data_dir, args.master_key_file)
        new = load_master_key(key_file=args.new_key_file)
        store = KeyStore(args.data_dir / "tunevault.db", current)
        count = store.rotate(new)
        store.close()
    except (MasterKeyError, KeyStoreMissing, KeyUnavailable, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"re-wrapped {count} data key(s) from master key {current.id} to {new.id}; start the server with "
          f"{MASTER_KEY_FILE_ENV}={args.new_key_file} (or put the new key where the old one was)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
