"""Checking uploaded datasets line by line (pure Python: the API process never imports torch).

check_dataset takes every format the worker trains on and applies the worker's own row checks
(training/formats.py, pure Python too), so an upload that passes here does not fail on the same
rows hours later in the worker. check_chat_jsonl is the older chat-only check, kept for callers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunevault.server.contract.chat_data import FieldError
from tunevault.server.contract.formats import RowParser, open_records

ROLES = ("system", "user", "assistant")
MAX_ERRORS_REPORTED = 10


@dataclass
class DatasetCheck:
    """What a pass over a dataset found: rows, and the first errors by line number."""

    row_count: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    data_format: str | None = None  # chat, instruction, completion or text (check_dataset only)
    file_kind: str | None = None  # jsonl, csv or parquet (check_dataset only)

    def add_error(self, line_number: int, where: str, reason: str) -> None:
        self.add_problem(f"line {line_number}", where, reason)

    def add_problem(self, location: str, where: str, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_REPORTED:
            self.errors.append(f"{location}: {where}: {reason}" if location else f"{where}: {reason}")

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.row_count > 0

    def summary(self) -> str:
        if self.row_count == 0 and self.error_count == 0:
            return "dataset: no examples (the file is empty)"
        more = self.error_count - len(self.errors)
        tail = f"; and {more} more error(s)" if more > 0 else ""
        return "; ".join(self.errors) + tail


def check_dataset(source: Path | Iterable[bytes], data_format: str | None = None) -> DatasetCheck:
    """Detects the file kind and row format (unless data_format names one) and checks every row.

    Takes a path (needed for Parquet) or lines (JSONL, CSV); either way rows are streamed, never
    held. Raises DatasetError only for an unknown data_format name.
    """
    check = DatasetCheck()
    with open_records(source, data_format) as opened:
        parser = RowParser.for_source(opened, data_format)
        check.file_kind = opened.kind
        for record in opened.records:
            location = opened.locate(record.number)
            try:
                parser.parse(record, location)
            except FieldError as problem:
                check.add_problem(location, problem.field, problem.reason)
                continue
            check.row_count += 1
    check.data_format = parser.data_format
    return check


def check_chat_jsonl(lines: Iterable[bytes]) -> DatasetCheck:
    """Checks OpenAI-format chat JSONL: one {"messages": [...]} object per non-blank line.

    Takes lines (e.g. an open binary file) so a large upload is never held in memory.
    """
    check = DatasetCheck()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            check.add_error(number, "encoding", f"not UTF-8 (byte {error.start})")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            check.add_error(number, "json", f"{error.msg} at column {error.colno}")
            continue
        reason = _chat_row_problem(row)
        if reason is not None:
            check.add_error(number, *reason)
            continue
        check.row_count += 1
    return check


def _chat_row_problem(row: object) -> tuple[str, str] | None:
    """Returns (field, reason) for the first problem of one parsed row, or None."""
    if not isinstance(row, dict):
        return "row", "must be a JSON object"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "must be a non-empty list"
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return where, "must be an object with role and content"
        if message.get("role") not in ROLES:
            return f"{where}.role", f"must be one of {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"{where}.content", "must be a string"
        if "weight" in message and message["weight"] not in (0, 1):
            return f"{where}.weight", "must be 0 or 1"
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        return "messages", "has no assistant message to learn from"
    if not any(m["content"].strip() for m in answers):
        return "messages", "every assistant message is empty"
    return None
