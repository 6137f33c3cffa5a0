"""How every process of the appliance opens the SQLite database and writes to it.

Plain sqlite3 only, and no import of the store package: the key store runs in worker
processes, which must load neither the Store nor sqlite_utils (nor run migrations).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any


def open_connection(path: Path | str) -> sqlite3.Connection:
    """Opens (creating the file if needed) the database at `path` with the appliance's pragmas.

    The connection is in autocommit mode (isolation_level=None) so that every transaction
    is an explicit BEGIN IMMEDIATE ... COMMIT: a writer takes the lock up front instead of
    upgrading a read lock and failing with SQLITE_BUSY halfway through.
    """
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: a job the API acknowledged survives a power cut, not only a process crash.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


@contextmanager
def immediate_transaction(connection: sqlite3.Connection, lock: AbstractContextManager[Any]) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT under `lock` (this process's one-writer discipline); ROLLBACK on any error.

    A `return` inside the block commits, like falling off its end.
    """
    with lock:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed may have ended the transaction already (SQLite rolls back on
            # some I/O errors); a second ROLLBACK would then hide the error that matters.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
