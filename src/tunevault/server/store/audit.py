"""The hash chain of the audit log: how an entry is hashed, and how the whole log is verified.

Pure functions over rows, so `tunevault audit verify` can check a copy of the database
without the server, and the server can append with the same rules.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
CONTENT_FIELDS = ("seq", "at", "principal", "tenant", "action", "job_id", "dataset_id", "details")


def content_hash(entry: dict[str, Any]) -> str:
    canonical = json.dumps({k: entry[k] for k in CONTENT_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_hash(prev_hash: str, content: str) -> str:
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    problem: str = ""  # names the first entry that was edited, deleted or reordered


def verify(rows: Iterable[dict[str, Any]], head: dict[str, Any] | None) -> Verdict:
    """Recomputes the chain in seq order; the first inconsistency is named by its seq."""
    prev, expected_seq, count = GENESIS, 1, 0
    for row in rows:
        count += 1
        if row["seq"] != expected_seq:
            return Verdict(False, count, f"entry {expected_seq} is missing (next entry is {row['seq']}): deleted or reordered")
        if content_hash(row) != row["content_hash"]:
            return Verdict(False, count, f"entry {row['seq']} was edited: its content does not match its content hash")
        if row["prev_hash"] != prev:
            return Verdict(False, count, f"entry {row['seq']} does not follow entry {row['seq'] - 1}: deleted, swapped or edited")
        if entry_hash(row["prev_hash"], row["content_hash"]) != row["entry_hash"]:
            return Verdict(False, count, f"entry {row['seq']} was edited: its entry hash is wrong")
        prev, expected_seq = row["entry_hash"], expected_seq + 1
    last = expected_seq - 1
    if head is None:
        return Verdict(last == 0, count, "" if last == 0 else "the chain head is missing")
    if head["seq"] != last or head["entry_hash"] != prev:
        return Verdict(False, count, f"entries after {last} were deleted (the head records entry {head['seq']})")
    return Verdict(True, count)
