"""Opening the SQLite database: WAL mode, durability pragmas, and numbered migrations."""

from __future__ import annotations

import sqlite3
import time
from importlib import resources
from pathlib import Path

import sqlite_utils


def connect(path: Path | str) -> sqlite_utils.Database:
    """Opens (creating if needed) the database at `path` and brings its schema up to date.

    The connection is in autocommit mode (isolation_level=None) so that every transaction
    is an explicit BEGIN IMMEDIATE ... COMMIT: a writer takes the lock up front instead of
    upgrading a read lock and failing with SQLITE_BUSY halfway through.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a job the API acknowledged survives a power cut, not only a process crash.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


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
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_statements(script):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", [name, time.time()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
