"""Dataset formats: chat, instruction, prompt/completion and text, in JSONL, CSV and Parquet; detection, override, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import DEFAULT_MODEL
from tests.test_training_data import _labelled_text
from tests.tiny_model import EXAMPLES, WorkerRun, run_worker, write_job
from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract.chat_data import MAX_LINE_BYTES, DatasetError
from tunevault.server.contract.formats import read_dataset
from tunevault.server.contract.job_spec import resolve_for_files
from tunevault.server.training.job_data import prepare_job_data
from tunevault.server.training.tokenization import IGNORE_INDEX, accuracy_prompt_ids, tokenize_example


@pytest.fixture(scope="module")
def tokenizer(models_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(models_dir / DEFAULT_MODEL), local_files_only=True)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_rows(folder: Path, kind: str, rows: list[dict]) -> Path:
    """The same rows as a JSONL, CSV (absent cells empty) or Parquet (absent cells null) file."""
    if kind == "jsonl":
        return write_jsonl(folder / "data.jsonl", rows)
    if kind == "parquet":
        return write_parquet(folder / "data.parquet", rows)
    header = list(dict.fromkeys(k for row in rows for k in row))
    return write_csv(folder / "data.csv", header, [[row.get(k, "") for k in header] for row in rows])


labelled_runs = _labelled_text  # decoded runs of consecutive labelled tokens


INSTRUCTION = [{"instruction": "Route the note.", "input": "Chest pain on exertion.", "output": "cardiology"},
               {"instruction": "Say hello.", "output": "hello"}]
COMPLETION = [{"prompt": "Note: itchy rash.\nSpecialty:", "completion": " dermatology"},
              {"prompt": "Note: wheeze.\nSpecialty:", "completion": " pulmonology"}]
TEXT = [{"text": "Referral letters name the specialty first."}, {"text": "Gastroscopy needs a fasting patient."}]
CHAT = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "wrong", "weight": 0},
                      {"role": "user", "content": "b"}, {"role": "assistant", "content": "right"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_instruction_rows_train_on_the_output_through_the_chat_template(tmp_path: Path, tokenizer, kind: str) -> None:
    dataset = read_dataset(write_rows(tmp_path, kind, INSTRUCTION))
    assert (dataset.data_format, dataset.file_kind) == ("instruction", kind)
    first, second = (tokenize_example(tokenizer, row) for row in dataset.rows)
    assert labelled_runs(tokenizer, first) == ["cardiology<|im_end|>"]
    assert labelled_runs(tokenizer, second) == ["hello<|im_end|>"]
    text = tokenizer.decode(first.input_ids)
    assert "<|im_start|>user\nRoute the note.\n\nChest pain on exertion.<|im_end|>\n<|im_start|>assistant\n" in text
    assert "<|im_start|>user\nSay hello.<|im_end|>" in tokenizer.decode(second.input_ids)  # no input, no blank lines


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_completion_rows_train_on_the_completion_and_eos_without_a_template(tmp_path: Path, tokenizer, kind: str) -> None:
    dataset = read_dataset(write_rows(tmp_path, kind, COMPLETION))
    assert (dataset.data_format, dataset.file_kind) == ("completion", kind)
    row = tokenize_example(tokenizer, dataset.rows[0])
    assert labelled_runs(tokenizer, row) == [" dermatology<|im_end|>"]
    assert tokenizer.decode(row.input_ids) == "Note: itchy rash.\nSpecialty: dermatology<|im_end|>"
    prompt = tokenizer("Note: itchy rash.\nSpecialty:", add_special_tokens=False)["input_ids"]
    assert row.input_ids[: len(prompt)] == prompt
    assert accuracy_prompt_ids(tokenizer, dataset.rows[0], 1000) == prompt


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_text_rows_label_every_token_but_the_first_and_end_with_eos(tmp_path: Path, tokenizer, kind: str) -> None:
    dataset = read_dataset(write_rows(tmp_path, kind, TEXT))
    assert (dataset.data_format, dataset.file_kind) == ("text", kind)
    row = tokenize_example(tokenizer, dataset.rows[0])
    ids = tokenizer(TEXT[0]["text"], add_special_tokens=False)["input_ids"]
    assert row.input_ids == ids + [tokenizer.eos_token_id]
    assert row.labels[0] == IGNORE_INDEX and row.labels[1:] == row.input_ids[1:]
    assert labelled_runs(tokenizer, row) == [tokenizer.decode(ids[1:]) + "<|im_end|>"]
    assert accuracy_prompt_ids(tokenizer, dataset.rows[0], 1000) is None


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_chat_rows_keep_weights_in_jsonl_and_parquet(tmp_path: Path, tokenizer, kind: str) -> None:
    dataset = read_dataset(write_rows(tmp_path, kind, CHAT))
    assert (dataset.data_format, dataset.file_kind) == ("chat", kind)
    first, second = (tokenize_example(tokenizer, row) for row in dataset.rows)
    assert labelled_runs(tokenizer, first) == ["right<|im_end|>"]
    assert labelled_runs(tokenizer, second) == ["hello<|im_end|>"]


def test_prompt_tokens_stay_a_prefix_where_one_string_would_merge_across_the_boundary(tmp_path: Path, tokenizer) -> None:
    prompt, completion = "x -", "> y"
    joined = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert joined[: len(prompt_ids)] != prompt_ids  # " -" + ">" merge into " ->" when tokenized together
    row = tokenize_example(tokenizer, read_dataset(write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": prompt, "completion": completion}])).rows[0])
    assert row.input_ids[: len(prompt_ids)] == prompt_ids
    assert labelled_runs(tokenizer, row) == ["> y<|im_end|>"]


def test_a_byte_order_mark_is_accepted_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(TEXT[0]).encode() + b"\n")
    csv_file = tmp_path / "bom.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfprompt,completion\r\nq,a\r\n")
    assert read_dataset(jsonl).data_format == "text"
    assert read_dataset(csv_file).rows[0].prompt == "q"


def test_csv_quoted_cells_may_span_lines_and_errors_name_the_file_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["instruction", "input", "output"],
                     [["Route.", "first line\nsecond line", "neurology"], ["Route.", "", ""]])
    assert path.read_text().count("\n") == 4  # the header, a row over two lines, a row
    with pytest.raises(DatasetError, match=r"d\.csv line 4: output: is an empty answer"):
        read_dataset(path)


@pytest.mark.parametrize("kind, override, message", [
    ("jsonl", "completion", "line 1: prompt: missing; the completion format has prompt, completion"),
    ("jsonl", "chat", "line 1: messages: missing"),
    ("csv", "text", "line 1: header: missing column(s) text"),
    ("csv", "chat", "line 1: header: chat rows need JSONL or Parquet"),
    ("parquet", "completion", "columns: missing column(s) prompt, completion"),
])
def test_the_override_refuses_a_file_of_another_format_naming_line_and_field(
        tmp_path: Path, kind: str, override: str, message: str) -> None:
    path = write_rows(tmp_path, kind, INSTRUCTION)
    assert read_dataset(path, "instruction").data_format == "instruction"
    with pytest.raises(DatasetError) as caught:
        read_dataset(path, override)
    assert message in str(caught.value)


def test_the_override_checks_every_row_not_only_the_first(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [INSTRUCTION[0], COMPLETION[0]])
    with pytest.raises(DatasetError, match="line 2: instruction: missing"):
        read_dataset(path, "instruction")
    with pytest.raises(DatasetError, match="unknown data format 'alpaca'"):
        read_dataset(path, "alpaca")


GOOD = json.dumps(INSTRUCTION[0])


@pytest.mark.parametrize("bad_line, message", [
    ('{"instruction": "x", "output": ', "line 2: json: not valid JSON"),
    ("[" * 100_000, "line 2: json: not valid JSON"),
    ('["instruction", "output"]', "line 2: row: must be a JSON object, got a list"),
    ('{"instruction": 5, "output": "y"}', "line 2: instruction: must be a string, got a number"),
    ('{"instruction": "x", "output": "  "}', "line 2: output: is an empty answer"),
    ('{"instruction": "x", "output": "y", "notes": "z"}', "line 2: row: unsupported key(s) notes"),
    ('{"prompt": "q", "completion": "a"}', ("line 2: row: has the completion format (prompt, completion) "
                                            "but line 1 set the file's format to instruction")),
    ("x" * (MAX_LINE_BYTES + 10), f"line 2: row: longer than {MAX_LINE_BYTES} bytes"),
])
def test_malformed_jsonl_lines_are_named_with_line_field_and_reason(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    assert str(caught.value).startswith("d.jsonl ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}], "messages[0].role: must be one of"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}], "messages[1].content: is an empty answer"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "x"}], "messages: has no assistant turn"),
])
def test_malformed_chat_rows_are_named_with_line_and_field(tmp_path: Path, messages: list, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT[1], {"messages": messages}])
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    assert f"line 2: {message}" in str(caught.value)


def test_invalid_utf8_names_its_line_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(GOOD.encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "y"}\n')
    csv_file = tmp_path / "d.csv"
    csv_file.write_bytes(b"text\nfine\ncaf\xe9\n")
    with pytest.raises(DatasetError, match="line 2: encoding: not valid UTF-8"):
        read_dataset(jsonl)
    with pytest.raises(DatasetError, match="line 3: encoding: not valid UTF-8"):
        read_dataset(csv_file)
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("text\nhello\n".encode("utf-16"))
    with pytest.raises(DatasetError, match="line 1: encoding: not valid UTF-8"):
        read_dataset(utf16)


@pytest.mark.parametrize("content, message", [
    ("question,answer\nq,a\n", "line 1: header: neither a JSON object (JSONL) nor a header naming"),
    ("messages\n[]\n", "line 1: header: chat rows need JSONL or Parquet"),
    ("prompt,completion,notes\nq,a,n\n", "line 1: header: unsupported column(s) notes"),
    ("prompt,completion\nq,a\nq,a,extra\n", "line 3: row: has 3 cells, the header has 2"),
    ("prompt,completion\n,a\n", "line 2: prompt: is empty"),
])
def test_malformed_csv_is_named_with_line_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    assert message in str(caught.value)


def test_malformed_parquet_is_named_with_row_and_field(tmp_path: Path) -> None:
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["q", "q"], "completion": [" a", None]}), nulls)
    with pytest.raises(DatasetError, match="row 2: completion: missing"):
        read_dataset(nulls)
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"text": ["fine", "also fine"]}).append_column("extra", pa.array([1, 2])), typed)
    with pytest.raises(DatasetError, match="columns: unsupported column.s. extra"):
        read_dataset(typed)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"instruction": ["x", "x"], "output": ["y", None]}).set_column(
        1, "output", pa.array([1, 2])), numbers)
    with pytest.raises(DatasetError, match="row 1: output: must be a string, got a number"):
        read_dataset(numbers)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        read_dataset(broken)


@pytest.mark.parametrize("rows, prompt_end", [
    (INSTRUCTION * 4, "<|im_start|>assistant\n"),
    (COMPLETION * 4, "Specialty:"),
    (TEXT * 4, None),
])
def test_accuracy_examples_ask_the_prompt_or_nothing_for_text(tmp_path: Path, tokenizer, rows: list, prompt_end) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = prepare_job_data(tokenizer, path, None, resolve_for_files({"validation_fraction": 0.25}, path))
    if prompt_end is None:
        assert data.accuracy_examples == [] and data.data_format == "text"
        return
    assert data.accuracy_examples
    for example in data.accuracy_examples:
        assert tokenizer.decode(example.prompt_ids).endswith(prompt_end)
        assert example.reference.strip() in {"cardiology", "hello", "dermatology", "pulmonology"}


def test_uploads_accept_csv_and_parquet_and_name_the_bad_line(server, tmp_path: Path) -> None:
    import grpc

    csv_file = write_rows(tmp_path, "csv", INSTRUCTION * 3)
    parquet = write_rows(tmp_path, "parquet", COMPLETION * 2)
    bad = write_csv(tmp_path / "bad.csv", ["prompt", "completion"], [["q", "a"], ["q", ""]])
    with server.client() as client:
        assert client.upload_dataset(csv_file).row_count == 6
        assert client.upload_dataset(parquet).row_count == 4
        with pytest.raises(grpc.RpcError) as refused:
            client.upload_dataset(bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 3: completion: is an empty answer" in refused.value.details()


# One real worker job per new file kind, on the tiny random model --------------------------------


def _triage(rows: int) -> list[tuple[str, str, str]]:
    lines = (EXAMPLES / "triage.jsonl").read_text().splitlines()[:rows]
    return [tuple(m["content"] for m in json.loads(line)["messages"]) for line in lines]  # system, user, assistant


def _train(jobs: Path, tiny_models_dir: Path, job_id: str, data: Path) -> WorkerRun:
    write_job(jobs, job_id, tiny_models_dir / "tiny-llama", data,
              {"max_steps": 4, "batch_size": 4, "eval_every": 2, "eval_accuracy_max_examples": 4, "checkpoint_every": 0})
    return run_worker(jobs, job_id)


def test_worker_trains_on_an_instruction_csv(tmp_path: Path, tiny_models_dir: Path) -> None:
    data = write_csv(tmp_path / "train.csv", ["instruction", "input", "output"], [list(r) for r in _triage(24)])
    run = _train(tmp_path / "jobs", tiny_models_dir, "job-csv", data)
    assert run.returncode == 0, run.log
    assert run.events[-1]["type"] == "result" and run.events[-1]["metrics"]["steps"] == 4
    assert "base_accuracy" in run.of_type("eval.baseline")[0]["metrics"]


def test_worker_trains_on_a_prompt_completion_parquet(tmp_path: Path, tiny_models_dir: Path) -> None:
    rows = [{"prompt": f"{note}\nSpecialty:", "completion": f" {label}"} for _, note, label in _triage(24)]
    run = _train(tmp_path / "jobs", tiny_models_dir, "job-parquet", write_parquet(tmp_path / "train.parquet", rows))
    assert run.returncode == 0, run.log
    assert run.events[-1]["type"] == "result" and run.events[-1]["metrics"]["steps"] == 4
    assert run.events[-1]["metrics"]["eval_loss"] < run.events[-1]["metrics"]["base_eval_loss"]


def test_an_upload_may_name_its_format_and_a_mismatch_is_refused_with_the_line(server, tmp_path: Path) -> None:
    import grpc

    from tunevault.v1 import tunevault_pb2 as pb

    csv_file = tmp_path / "notes.csv"
    csv_file.write_text("prompt,completion\nThe patient reports,chest pain\n")
    with server.client() as client:
        dataset = client.upload_dataset(csv_file, data_format="completion")
        assert dataset.format == pb.DATASET_FORMAT_COMPLETION and dataset.row_count == 1
        assert client.upload_dataset(csv_file).format == pb.DATASET_FORMAT_COMPLETION  # detected
        with pytest.raises(grpc.RpcError) as refused:
            client.upload_dataset(csv_file, data_format="text")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 1" in refused.value.details() and "text" in refused.value.details()


def test_job_data_counts_duplicates_overlap_and_rows_that_teach_stopping(tmp_path: Path, tokenizer) -> None:
    chat = lambda user, answer: json.dumps({"messages": [{"role": "user", "content": user},  # noqa: E731
                                                         {"role": "assistant", "content": answer}]})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([chat("a", "x"), chat("a", "x"), chat("b", "y"), chat("c", "z")]) + "\n")
    validation = tmp_path / "validation.jsonl"
    validation.write_text("\n".join([chat("c", "z"), chat("d", "w")]) + "\n")
    data = prepare_job_data(tokenizer, train, validation, resolve_for_files({"max_steps": 1}, train, validation))
    assert data.duplicate_train_rows == 1 and data.overlap_rows == 1
    assert data.rows_learning_to_stop == 4  # every answer is labelled through <|im_end|>
    warnings = data.warnings(tokenizer.eos_token)
    assert any("repeat an earlier row" in w for w in warnings) and any("also appear" in w for w in warnings)
    assert not any("never stop" in w for w in warnings)

    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "a document"}) + "\n")
    plain = prepare_job_data(tokenizer, text, text, resolve_for_files({"max_steps": 1}, text, text))
    assert plain.rows_learning_to_stop == 1  # EOS is appended to text rows and labelled


def test_truncation_policy_cuts_or_drops_long_rows_and_reports_them(tmp_path: Path, tokenizer) -> None:
    chat = lambda user, answer: json.dumps({"messages": [{"role": "user", "content": user},  # noqa: E731
                                                         {"role": "assistant", "content": answer}]})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([chat("short", "x"), chat("long " * 200, "y"), chat("also short", "z")]) + "\n")
    validation = tmp_path / "validation.jsonl"
    validation.write_text(chat("short", "x") + "\n")
    cut = prepare_job_data(tokenizer, train, validation,
                           resolve_for_files({"max_steps": 1, "max_seq_len": 64}, train, validation))
    assert len(cut.train) == 2 and cut.dropped_train_rows == 1 and cut.truncated_rows == 1  # cut past its answer
    dropped = prepare_job_data(tokenizer, train, validation,
                               resolve_for_files({"max_steps": 1, "max_seq_len": 64, "truncation": "drop"}, train,
                                                 validation))
    assert len(dropped.train) == 2 and dropped.dropped_train_rows == 1 and dropped.truncated_rows == 0
    with pytest.raises(hp.HyperparameterError, match="truncation.*truncate, drop"):
        hp.validate({"truncation": "left"})
