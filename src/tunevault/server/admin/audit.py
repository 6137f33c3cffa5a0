"""`tunevault audit verify|export`: the store's own chain check, on the data directory (or a copy of it)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from tunevault.server.config import ServerConfig, default_data_dir
from tunevault.server.store import Store


def _write_entries(entries: list[dict[str, Any]], out: TextIO) -> None:
    for entry in entries:
        out.write(json.dumps({**entry, "details": json.loads(entry["details"])}, sort_keys=True) + "\n")


def run(args: argparse.Namespace) -> int:
    """Reads the database file directly, not through the server: the check must not trust the server."""
    database = ServerConfig(data_dir=args.data_dir or default_data_dir()).database_path
    if not database.is_file():  # Store would create an empty database and call its chain intact
        raise SystemExit(f"no database at {database}")
    store = Store(database)
    try:
        verdict = store.verify_audit()
        entries = store.audit_entries()
    finally:
        store.close()
    if args.audit_command == "verify":
        if verdict.ok:  # an intact chain's head is its last entry's hash
            print(f"audit log intact: {verdict.entries} entries, head {entries[-1]['entry_hash'] if entries else '-'}")
            return 0
        print(f"audit log BROKEN: {verdict.problem}")
        return 1
    if args.output:
        with open(args.output, "w") as out:
            _write_entries(entries, out)
    else:
        _write_entries(entries, sys.stdout)
    print(f"exported {len(entries)} entries; chain {'intact' if verdict.ok else 'BROKEN: ' + verdict.problem}",
          file=sys.stderr)
    return 0 if verdict.ok else 1
