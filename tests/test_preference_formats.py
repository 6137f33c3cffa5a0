"""Preference and chat-variant formats accepted unchanged; bad rows refused with their line and field."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.conftest import RunningServer
from tunevault.server.contract.chat_data import ChatRow, DatasetError
from tunevault.server.contract.formats import read_dataset
from tunevault.server.contract.preference_rows import PreferenceRow
from tunevault.server.datasets import check_dataset

USER_Q = {"role": "user", "content": "What is 2+2?"}
OPENAI_DPO = {"input": {"messages": [USER_Q], "tools": [], "parallel_tool_calls": True},
              "preferred_output": [{"role": "assistant", "content": "4"}],
              "non_preferred_output": [{"role": "assistant", "content": "5"}]}
TRL_STRING = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
TRL_CONVERSATIONAL = {"prompt": [USER_Q], "chosen": [{"role": "assistant", "content": "4"}],
                      "rejected": [{"role": "assistant", "content": "5"}]}
TRL_IMPLICIT = {"chosen": [USER_Q, {"role": "assistant", "content": "4"}],
                "rejected": [USER_Q, {"role": "assistant", "content": "5"}]}
TOOL_CHAT = {"messages": [
    {"role": "user", "name": "dr_lee", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "assistant", "name": "bot", "content": "It is sunny."}],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]}
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello."}]}


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("row", "data_format"), [
    (OPENAI_DPO, "openai_preference"), (TRL_STRING, "preference"), (TRL_CONVERSATIONAL, "preference"),
    (TRL_IMPLICIT, "preference"),
])
def test_preference_rows_are_read_as_prompt_chosen_rejected(tmp_path: Path, row: dict, data_format: str) -> None:
    dataset = read_dataset(jsonl(tmp_path / "p.jsonl", [row, row]))
    assert dataset.data_format == data_format
    first = dataset.rows[0]
    assert isinstance(first, PreferenceRow)
    assert (first.chosen, first.rejected, first.line_number) == ("4", "5", 1)
    assert first.templated == (row is not TRL_STRING)
    assert check_dataset(jsonl(tmp_path / "p.jsonl", [row, row])).ok


def test_trl_implicit_string_prompt_is_the_shared_start_cut_at_a_word() -> None:
    row = check_and_read({"chosen": "Q: capital of France? A: Paris", "rejected": "Q: capital of France? A: Lyon"})
    assert (row.prompt, row.chosen, row.rejected) == ("Q: capital of France? A: ", "Paris", "Lyon")


def check_and_read(record: dict) -> PreferenceRow:
    from tunevault.server.contract.preference_rows import parse_trl_preference

    return parse_trl_preference(record, 1)


def test_openai_chat_with_names_and_tool_calls_trains_the_call_as_text(tmp_path: Path) -> None:
    row = read_dataset(jsonl(tmp_path / "t.jsonl", [TOOL_CHAT])).rows[0]
    assert isinstance(row, ChatRow)
    roles = [m.role for m in row.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert '"name": "weather"' in row.messages[1].content and row.messages[1].trainable
    assert "sunny" in row.messages[2].content


def test_sharegpt_conversations_become_chats(tmp_path: Path) -> None:
    dataset = read_dataset(jsonl(tmp_path / "s.jsonl", [SHAREGPT]))
    assert dataset.data_format == "sharegpt"
    assert [(m.role, m.content) for m in dataset.rows[0].messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")]


def test_alpaca_json_array_is_read_element_by_element(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add", "input": "2 and 2", "output": "4"},
                                {"instruction": "Greet", "input": "", "output": "Hello"}], indent=2))
    dataset = read_dataset(path)
    assert (dataset.data_format, dataset.file_kind, len(dataset.rows)) == ("instruction", "json", 2)
    assert dataset.rows[0].messages[0].content == "Add\n\n2 and 2"


@pytest.mark.parametrize(("text", "expected"), [
    ('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": ""}\n]\n', "line 3: output"),
    ('[\n {"instruction": "a", "output": "b"}\n {"instruction": "c", "output": "d"}\n]\n', "line 3: json"),
    ('[\n {"instruction": "a", "output": "b"},\n 7\n]\n', "line 3: row: must be a JSON object"),
])
def test_bad_alpaca_array_elements_name_their_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=expected):
        read_dataset(path)


BAD_ROWS = [
    ({**OPENAI_DPO, "preferred_output": [{"role": "user", "content": "4"}]}, r"line 2: preferred_output\[0\]"),
    ({**OPENAI_DPO, "non_preferred_output": []}, "line 2: non_preferred_output: must be"),
    ({**OPENAI_DPO, "input": {"messages": [USER_Q, {"role": "assistant", "content": "x"}]}},
     "line 2: input.messages: must end with the user's turn"),
    ({**OPENAI_DPO, "input": {"messages": [{"role": "robot", "content": "x"}]}}, r"line 2: input.messages\[0\].role"),
    ({**TRL_STRING, "rejected": "4"}, "line 2: rejected: is the same answer"),
    ({**TRL_STRING, "chosen": ["4"]}, "line 2: chosen: must be a string"),
    ({"prompt": "2+2=", "chosen": "4"}, "line 2: rejected: missing"),
    ({**TOOL_CHAT, "messages": [USER_Q, {"role": "assistant", "tool_calls": [{"function": {}}]}]},
     r"line 2: messages\[1\].tool_calls\[0\].function"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, r"line 2: conversations\[0\].from"),
]


@pytest.mark.parametrize(("bad", "expected"), BAD_ROWS)
def test_bad_rows_name_their_line_and_field(tmp_path: Path, bad: dict, expected: str) -> None:
    good = OPENAI_DPO if "input" in bad else TRL_STRING if "chosen" in bad else TOOL_CHAT
    good = SHAREGPT if "conversations" in bad else good
    with pytest.raises(DatasetError, match=expected):
        read_dataset(jsonl(tmp_path / "bad.jsonl", [good, bad]))
    check = check_dataset(jsonl(tmp_path / "bad.jsonl", [good, bad]))
    assert not check.ok and check.errors[0].startswith("line 2: ")


@pytest.mark.parametrize("row", [
    '{"messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "x"}]}',
    '{"prompt": "2+2=", "chosen": "4", "rejected": "\\udfff"}',
    '{"input": {"messages": [{"role": "user", "content": "\\ud83d"}]}, "preferred_output": '
    '[{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}',
])
def test_a_lone_surrogate_is_refused_naming_line_and_field_never_echoing_it(tmp_path: Path, row: str) -> None:
    check = check_dataset(jsonl(tmp_path / "s.jsonl", [json.dumps(TRL_STRING), row]))
    assert not check.ok
    assert check.errors[0].startswith("line 2: ") and "surrogate" in check.errors[0]
    assert "\\ud" not in check.errors[0].split("(")[0]


def test_the_server_refuses_a_lone_surrogate_at_upload_and_accepts_every_format(
        server: RunningServer, tmp_path: Path) -> None:
    lone = '{"prompt": "a\\ud800", "chosen": "b", "rejected": "c"}'
    bad = jsonl(tmp_path / "bad.jsonl", [json.dumps(TRL_STRING), lone])
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "", "output": "4"}] * 2, indent=1))
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.upload_dataset(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "line 2" in refused.value.details() and "prompt" in refused.value.details()
        for index, row in enumerate([OPENAI_DPO, TRL_STRING, TRL_CONVERSATIONAL, TRL_IMPLICIT, TOOL_CHAT, SHAREGPT]):
            assert client.upload_dataset(jsonl(tmp_path / f"ok{index}.jsonl", [row, row])).row_count == 2
        assert client.upload_dataset(alpaca).row_count == 2


def test_tool_call_arguments_and_preference_pairs_reach_the_pii_scrubber_as_content(tmp_path: Path) -> None:
    from tunevault.server.training.pii_step import as_chat_jsonl, back_to_text_rows

    source, way_back = as_chat_jsonl(jsonl(tmp_path / "tools.jsonl", [TOOL_CHAT]), tmp_path / "tools.chat.jsonl")
    assert source != tmp_path / "tools.jsonl" and way_back is None
    assert "Paris" in json.loads(source.read_text())["messages"][1]["content"]

    for rows, templated in (([TRL_STRING, TRL_STRING], False), ([TRL_CONVERSATIONAL, TRL_IMPLICIT], True),
                            ([OPENAI_DPO], True)):
        source, way_back = as_chat_jsonl(jsonl(tmp_path / "pairs.jsonl", rows), tmp_path / "pairs.chat.jsonl")
        assert way_back == "preference"
        back_to_text_rows(source, way_back)  # what the PII step does after redacting
        back = read_dataset(source).rows
        assert [(r.templated, r.chosen, r.rejected) for r in back] == [(templated, "4", "5")] * len(rows)
