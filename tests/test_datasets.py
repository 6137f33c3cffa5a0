"""Dataset checks name the line and the field of every problem."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunevault.server.contract.chat_data import MAX_LINE_BYTES, DatasetError
from tunevault.server.datasets import check_chat_jsonl, check_dataset


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
        "line 3: messages[0].role: must be one of system, user, assistant",
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


# check_dataset: every format the worker trains on, with the worker's own row checks -------------

INSTRUCTION = json.dumps({"instruction": "Route the note.", "input": "Chest pain.", "output": "cardiology"}).encode()


def test_check_dataset_reports_the_detected_format_kind_and_rows(tmp_path: Path) -> None:
    csv_file = tmp_path / "upload.incoming"
    csv_file.write_text('prompt,completion\n"Note: rash\nSpecialty:", dermatology\nNote: wheeze,pulmonology\n')
    parquet = tmp_path / "upload-2.incoming"
    pq.write_table(pa.table({"text": ["one document", "another"]}), parquet)
    found = [(c.ok, c.data_format, c.file_kind, c.row_count) for c in (
        check_dataset(csv_file), check_dataset(parquet), check_dataset(iter([INSTRUCTION, b"", INSTRUCTION])),
        check_dataset([GOOD]))]
    assert found == [(True, "completion", "csv", 2), (True, "text", "parquet", 2), (True, "instruction", "jsonl", 2),
                     (True, "chat", "jsonl", 1)]


def test_check_dataset_names_every_bad_row_with_its_line_field_and_reason() -> None:
    lines = [
        INSTRUCTION,
        json.dumps({"instruction": "x", "output": ""}).encode(),
        b"\xef\xbb\xbf" + INSTRUCTION,  # a byte order mark is only allowed at the start of the file
        GOOD,
        b"x" * (MAX_LINE_BYTES + 1),
        b"\xff\xfe",
        json.dumps({"instruction": 7, "output": "y"}).encode(),
    ]
    check = check_dataset(lines)
    assert (check.ok, check.data_format, check.row_count) == (False, "instruction", 1)
    assert check.errors == [
        "line 2: output: is an empty answer: there is nothing to learn",
        "line 3: json: not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1)",
        ("line 4: row: has the chat format ({\"messages\": [...]}) but line 1 set the file's format to instruction; "
         "every row must share one format: expected instruction, input (optional), output"),
        f"line 5: row: longer than {MAX_LINE_BYTES} bytes",
        "line 6: encoding: not valid UTF-8 (byte 0)",
        "line 7: instruction: must be a string, got a number",
    ]


def test_check_dataset_applies_the_override_and_names_parquet_rows(tmp_path: Path) -> None:
    assert check_dataset([INSTRUCTION], "completion").errors == [
        "line 1: prompt: missing; the completion format has prompt, completion"]
    parquet = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]},
    ]), parquet)
    check = check_dataset(parquet)
    assert check.data_format == "chat" and check.row_count == 1
    assert check.errors == ["row 2: messages[1].role: must be one of system, user, assistant, got another string"]
    with pytest.raises(DatasetError, match="unknown data format"):
        check_dataset([INSTRUCTION], "alpaca")


def test_check_dataset_streams_a_huge_line_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("wb") as handle:
        handle.write(INSTRUCTION + b"\n" + b"x" * (32 << 20) + b"\n" + INSTRUCTION + b"\n")
    tracemalloc.start()
    try:
        check = check_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.row_count == 2 and check.errors == [f"line 2: row: longer than {MAX_LINE_BYTES} bytes"]
    assert peak < 4 * MAX_LINE_BYTES


def test_the_upload_checker_does_not_import_torch_transformers_or_pyarrow() -> None:
    code = ("import sys; from tunevault.server.datasets import check_dataset; check_dataset([b'{\"text\": \"x\"}']); "
            "print(sorted({'torch', 'transformers', 'pyarrow'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
