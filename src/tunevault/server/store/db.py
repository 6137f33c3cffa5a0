"""The store's database: its one connection and lock, and the numbered migrations."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import sqlite_utils

from tunevault.server.sqlite import immediate_transaction, open_connection


def connect(path: Path | str) -> sqlite_utils.Database:
    """Opens (creating if needed) the database at `path` and brings its schema up to date.

    Connection and pragmas as every process opens them (tunevault.server.sqlite); only the
    server's Store migrates, so a child process never changes the schema under it.
    """
    db = sqlite_utils.Database(open_connection(path))
    migrate(db)
    return db


class Connection:
    """The Store's one connection and its lock, shared by the repository of every aggregate.

    One connection, one writer at a time, explicit BEGIN IMMEDIATE transactions. Readers share
    the connection under the lock too; SQLite answers them in microseconds, and one connection
    keeps the "one writer" discipline obvious. Re-entrant, so a repository may read (under the
    lock) inside its own transaction.
    """

    def __init__(self, path: Path | str) -> None:
        self.db: sqlite_utils.Database = connect(path)
        self.lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        with immediate_transaction(self.db.conn, self.lock):
            yield self.db

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """A read of one statement, under the lock (several reads that must agree take the lock themselves)."""
        with self.lock:
            return list(self.db.query(sql, params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _migration_scripts() -> list[tuple[str, str]]:
    folder = resources.files("tunevault.server.store").joinpath("migrations")
    scripts = [(entry.name, entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".sql")]
    return sorted(scripts)


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Applies the migrations not yet recorded, each in its own transaction; returns their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row["name"] for row in db.query("SELECT name FROM schema_migrations")}
    applied = []
    for name, script in _migration_scripts():
        if name in done:
            continue
        # executescript would COMMIT on its own; run statement by statement inside one transaction.
        # No lock: migrations run while the connection is being opened, before anyone shares it.
        with immediate_transaction(db.conn, nullcontext()):
            for statement in _split_statements(script):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", [name, time.time()])
        applied.append(name)
    return applied


def _split_statements(script: str) -> list[str]:
    statements, current = [], []
    for line in script.splitlines():
        current.append(line)
        candidate = "\n".join(current)
        if sqlite3.complete_statement(candidate):
            if candidate.strip():
                statements.append(candidate)
            current = []
    return [s for s in statements if _strip_comments(s)]


def _strip_comments(statement: str) -> str:
    return "\n".join(l for l in statement.splitlines() if not l.strip().startswith("--")).strip()
