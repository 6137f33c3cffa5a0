"""Checking uploaded datasets line by line (pure Python: the API process never imports torch)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
MAX_ERRORS_REPORTED = 10


@dataclass
class DatasetCheck:
    """What a pass over a dataset found: rows, and the first errors by line number."""

    row_count: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def add_error(self, line_number: int, where: str, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_REPORTED:
            self.errors.append(f"line {line_number}: {where}: {reason}")

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.row_count > 0

    def summary(self) -> str:
        if self.row_count == 0 and self.error_count == 0:
            return "dataset: no examples (the file is empty)"
        more = self.error_count - len(self.errors)
        tail = f"; and {more} more error(s)" if more > 0 else ""
        return "; ".join(self.errors) + tail


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
            return f"{where}.role", f"must be one of {', '.join(ROLES)} (got {message.get('role')!r})"
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
