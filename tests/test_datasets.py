"""Dataset checks name the line and the field of every problem."""

from __future__ import annotations

import json

from tunevault.server.datasets import check_chat_jsonl


def _row(*messages: tuple[str, str]) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]}).encode()


GOOD = _row(("user", "hi"), ("assistant", "hello"))


def test_good_rows_are_counted_and_blank_lines_skipped() -> None:
    check = check_chat_jsonl([GOOD, b"", b"  ", GOOD])
    assert check.ok and check.row_count == 2


def test_each_problem_names_its_line_and_field() -> None:
    lines = [
        GOOD,
        b"{not json",
        _row(("robot", "x"), ("assistant", "y")),
        _row(("user", "only a question")),
        _row(("user", "q"), ("assistant", "   ")),
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        b"\xff\xfe",
        b"[1, 2]",
    ]
    check = check_chat_jsonl(lines)
    assert not check.ok
    assert check.errors == [
        "line 2: json: Expecting property name enclosed in double quotes at column 2",
        "line 3: messages[0].role: must be one of system, user, assistant (got 'robot')",
        "line 4: messages: has no assistant message to learn from",
        "line 5: messages: every assistant message is empty",
        "line 6: messages[0].content: must be a string",
        "line 7: encoding: not UTF-8 (byte 0)",
        "line 8: row: must be a JSON object",
    ]


def test_summary_caps_the_list_and_counts_the_rest() -> None:
    check = check_chat_jsonl([b"{"] * 25)
    assert len(check.errors) == 10 and check.error_count == 25
    assert check.summary().endswith("and 15 more error(s)")


def test_empty_file_is_not_a_dataset() -> None:
    check = check_chat_jsonl([])
    assert not check.ok and "empty" in check.summary()
