"""Chat rows: checking one OpenAI-format conversation.

One row is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}. An
assistant message may carry "weight": 0 to be shown to the model but not trained on (as in the
OpenAI format). Every problem names its field; the reader adds the 1-based line number, because
the person who reads the error has the file open in an editor.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "weight"}
MAX_LINE_BYTES = 1 << 20  # a 1 MiB row is a mistake, not a training example



MAX_NAMED_KEY_CHARS = 32


def describe_keys(keys: object) -> str:
    """Unsupported keys for an error: a key that looks like a field name is named (it is the
    field at fault); any other is only counted, since it is likely row content (a headerless
    CSV's first row, a value used as a key)."""
    names = sorted(str(k) for k in keys if str(k).isidentifier() and len(str(k)) <= MAX_NAMED_KEY_CHARS)
    others = sum(1 for _ in keys) - len(names)
    parts = names + ([f"{others} other key(s) (not shown)"] if others else [])
    return ", ".join(parts)


class DatasetError(ValueError):
    """The dataset is unusable; the message names the file line when one is to blame."""


class FieldError(DatasetError):
    """One row is unusable: which field and why. Readers add where the row is (line or row number)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


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


def _parse_message(index: int, raw: object) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise FieldError(where, "must be an object")
    unknown = set(raw) - MESSAGE_KEYS
    if unknown:
        raise FieldError(where, f"unsupported key(s) {describe_keys(unknown)}")
    role, content = raw.get("role"), raw.get("content")
    if role not in ROLES:
        got = "another string" if isinstance(role, str) else f"a {type(role).__name__}"
        raise FieldError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {got}")
    if not isinstance(content, str):
        raise FieldError(f"{where}.content", "must be a string")
    weight = raw.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise FieldError(f"{where}.weight", "must be 0 or 1")
    if weight == 0 and role != "assistant":
        raise FieldError(f"{where}.weight", "is only allowed on assistant messages")
    if role == "assistant" and weight == 1 and not content.strip():
        # Training on an empty answer teaches the model to answer nothing.
        raise FieldError(f"{where}.content", "is an empty answer (give it weight 0 if it is only context)")
    return Message(role=role, content=content, trainable=weight == 1)


def _check_turns(messages: tuple[Message, ...]) -> None:
    if any(m.role == "system" for m in messages[1:]):
        raise FieldError("messages", "a system message may only come first")
    if not any(m.role == "assistant" for m in messages):
        raise FieldError("messages", "has no assistant turn: the last message must be the assistant's answer")
    if messages[-1].role != "assistant":
        raise FieldError("messages", "the last message must be the assistant's answer")
    if not any(m.role == "user" for m in messages):
        raise FieldError("messages", "needs at least one user message")
    if not any(m.role == "assistant" and m.trainable for m in messages):
        raise FieldError("messages", "has no assistant message with weight 1 to train on")


def parse_chat_record(record: dict[str, object], line_number: int) -> ChatRow:
    """Check one parsed chat row; raise FieldError naming the field at fault."""
    if "messages" not in record:
        raise FieldError("messages", 'missing: a chat row is {"messages": [...]}')
    unknown = set(record) - {"messages"}
    if unknown:
        raise FieldError("row", f"unsupported key(s) {describe_keys(unknown)}")
    raw_messages = record["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        raise FieldError("messages", "must be a non-empty list")
    messages = tuple(_parse_message(i, m) for i, m in enumerate(raw_messages))
    _check_turns(messages)
    return ChatRow(messages=messages, line_number=line_number)
