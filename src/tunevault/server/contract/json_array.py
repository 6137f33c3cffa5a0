"""A dataset that is one JSON array of row objects (Alpaca's own files), read element by element.

Each element is numbered by the file line it starts on, so its errors read like JSONL's. The
file is read whole (an array cannot be split at line ends), so its size is bounded: MAX_ARRAY_BYTES.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from tunevault.server.contract.chat_data import FieldError

MAX_ARRAY_BYTES = 256 << 20  # a bigger dataset belongs in JSONL, which is streamed
Item = tuple[int, object, "FieldError | None"]  # (line the element starts on, the element, problem)
_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n"


def _text(lines: Iterable[tuple[int, bytes | None]]) -> tuple[str | None, Item | None]:
    """The whole file as text, or the problem that makes it unreadable."""
    chunks: list[bytes] = []
    size = 0
    for number, raw in lines:
        if raw is None:
            return None, (number, None, FieldError("row", "line longer than the line limit"))
        size += len(raw)
        if size > MAX_ARRAY_BYTES:
            return None, (number, None, FieldError("file", f"a JSON array over {MAX_ARRAY_BYTES >> 20} MiB: use JSONL"))
        chunks.append(raw)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        problem = FieldError("encoding", f"not valid UTF-8 (byte {error.start})")
        return None, (data.count(b"\n", 0, error.start) + 1, None, problem)


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _SPACE:
        at += 1
    return at


def array_items(lines: Iterable[tuple[int, bytes | None]]) -> Iterator[Item]:
    """The elements of a JSON array file; a syntax error ends the file with an item naming its line."""
    text, problem = _text(lines)
    if text is None:
        yield problem  # type: ignore[misc]  # _text gives one or the other
        return
    at = _skip(text, text.index("[") + 1)  # the caller saw "[" open the file

    def line(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    if at < len(text) and text[at] == "]":
        return
    while True:
        try:
            element, end = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError as error:
            yield line(error.pos), None, FieldError("json", f"not valid JSON ({error.msg} at column {error.colno})")
            return
        except (RecursionError, ValueError):
            yield line(at), None, FieldError("json", "not valid JSON")
            return
        yield line(at), element, None
        at = _skip(text, end)
        if at < len(text) and text[at] == ",":
            at = _skip(text, at + 1)
            continue
        if at < len(text) and text[at] == "]" and not text[_skip(text, at + 1):].strip():
            return
        yield line(at), None, FieldError("json", "not valid JSON (expected , or ] between array elements)")
        return
