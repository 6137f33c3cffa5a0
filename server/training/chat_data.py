"""Chat datasets: reading OpenAI fine-tuning format JSONL, checking every row, and the validation split.

One row per line: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}.
An assistant message may carry "weight": 0 to be shown to the model but not trained on (as in
the OpenAI format). Every problem is reported with its 1-based line number, because the person
who reads the error has the file open in an editor.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "weight"}
MAX_LINE_BYTES = 1 << 20  # a 1 MiB chat row is a mistake, not a training example


class DatasetError(ValueError):
    """The dataset is unusable; the message names the file line when one is to blame."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    trainable: bool = True  # only meaningful for assistant messages


@dataclass(frozen=True)
class ChatRow:
    """One conversation and where it came from."""

    messages: tuple[Message, ...]
    line_number: int

    @property
    def reference_answer(self) -> str:
        """The last assistant message: what exact-match accuracy compares a generation against."""
        return self.messages[-1].content

    def as_template_input(self, upto: int | None = None) -> list[dict[str, str]]:
        """Messages as a chat template expects them (role and content only)."""
        return [{"role": m.role, "content": m.content} for m in self.messages[:upto]]


def _fail(path: Path, line_number: int, reason: str) -> DatasetError:
    return DatasetError(f"{path.name} line {line_number}: {reason}")


def _parse_message(path: Path, line_number: int, index: int, raw: object) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _fail(path, line_number, f"{where} must be an object")
    unknown = set(raw) - MESSAGE_KEYS
    if unknown:
        raise _fail(path, line_number, f"{where} has unsupported key(s) {', '.join(sorted(unknown))}")
    role, content = raw.get("role"), raw.get("content")
    if role not in ROLES:
        raise _fail(path, line_number, f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise _fail(path, line_number, f"{where}.content must be a string")
    weight = raw.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise _fail(path, line_number, f"{where}.weight must be 0 or 1")
    if weight == 0 and role != "assistant":
        raise _fail(path, line_number, f"{where}.weight is only allowed on assistant messages")
    return Message(role=role, content=content, trainable=weight == 1)


def parse_row(path: Path, line_number: int, line: str) -> ChatRow:
    """Parse and check one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(path, line_number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise _fail(path, line_number, 'must be an object with a "messages" list')
    unknown = set(record) - {"messages"}
    if unknown:
        raise _fail(path, line_number, f"unsupported key(s) {', '.join(sorted(unknown))}")
    raw_messages = record["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _fail(path, line_number, '"messages" must be a non-empty list')
    messages = tuple(_parse_message(path, line_number, i, m) for i, m in enumerate(raw_messages))
    if any(m.role == "system" for m in messages[1:]):
        raise _fail(path, line_number, "a system message may only come first")
    if messages[-1].role != "assistant":
        raise _fail(path, line_number, "the last message must be the assistant's answer")
    if not any(m.role == "user" for m in messages):
        raise _fail(path, line_number, "needs at least one user message")
    if not any(m.role == "assistant" and m.trainable for m in messages):
        raise _fail(path, line_number, "has no assistant message with weight 1 to train on")
    return ChatRow(messages=messages, line_number=line_number)


def read_chat_jsonl(path: Path) -> list[ChatRow]:
    """Read every non-blank line of a chat JSONL file; raise DatasetError on the first bad one."""
    rows: list[ChatRow] = []
    try:
        with path.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise _fail(path, line_number, f"longer than {MAX_LINE_BYTES} bytes")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _fail(path, line_number, "not valid UTF-8") from None
                if line.strip():
                    rows.append(parse_row(path, line_number, line))
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    if not rows:
        raise DatasetError(f"{path.name} has no rows")
    return rows


def split_validation(rows: list[ChatRow], validation_rows: int, seed: int) -> tuple[list[ChatRow], list[ChatRow]]:
    """Hold out `validation_rows` rows chosen by `seed`; both parts keep file order."""
    if validation_rows <= 0:
        raise DatasetError(f"need at least 2 rows to hold out a validation split, got {len(rows)}")
    # A private Random: the split must not depend on (or disturb) any global RNG state.
    chosen = set(random.Random(f"validation-split/{seed}").sample(range(len(rows)), validation_rows))
    train = [row for i, row in enumerate(rows) if i not in chosen]
    validation = [row for i, row in enumerate(rows) if i in chosen]
    return train, validation
