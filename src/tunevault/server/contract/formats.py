"""Dataset formats: which kind of file a dataset is, which row format it holds, and its rows as training rows.

File kinds are told by content, never by name (uploads are stored under ids): Parquet by its magic
bytes, JSONL by a JSON object on the first non-blank line, anything else must be CSV whose header
names the columns of a flat format. The row format is the override when one is given, else what
the CSV header, the Parquet schema or the first JSONL row names; every row must then share it.

  chat         {"messages": [...]}                    OpenAI chat, through the model's chat template
  instruction  instruction, input (optional), output  Alpaca; trained as a one-turn chat
  completion   prompt, completion                     plain text, no template; completion + EOS learnt
  text         text                                   plain text, every token learnt (continued pre-training)

Problems name where (JSONL and CSV: the file line, the CSV header being line 1; Parquet: the row),
the field and the reason. Pure Python (pyarrow only for Parquet): the API process checks uploads
with it and never imports torch.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from tunevault.server.contract.chat_data import (
    MAX_LINE_BYTES,
    ChatRow,
    DatasetError,
    FieldError,
    Message,
    describe_keys,
)
from tunevault.server.contract.chat_variants import TOP_LEVEL_TOOL_KEYS, parse_openai_chat, parse_sharegpt
from tunevault.server.contract.json_array import array_items
from tunevault.server.contract.preference_rows import (
    PreferenceRow,
    parse_openai_preference,
    parse_trl_preference,
)
from tunevault.server.contract.text_checks import unencodable_field
from tunevault.server.privacy.sealing.encryption import is_decrypting, open_plain

Row = TypeVar("Row")

PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
PARQUET_BATCH_ROWS = 256  # rows decoded at a time: a big Parquet upload is checked without loading it whole
AUTO = ("", "auto")

Line = tuple[int, "bytes | None"]  # (1-based number, the bytes; None for a line over MAX_LINE_BYTES)
CsvRow = tuple[int, "list[str] | None", "FieldError | None"]  # (first line, cells, problem)


@dataclass(frozen=True)
class RowFormat:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    shape: str = ""  # how the error messages describe a row of this format
    flat: bool = True  # every field a string, so it fits CSV columns

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


FORMATS: dict[str, RowFormat] = {f.name: f for f in (
    RowFormat("chat", ("messages",), TOP_LEVEL_TOOL_KEYS, shape='{"messages": [...]}', flat=False),
    RowFormat("instruction", ("instruction", "output"), ("input",), shape="instruction, input (optional), output"),
    RowFormat("completion", ("prompt", "completion"), shape="prompt, completion"),
    RowFormat("text", ("text",), shape="text"),
    RowFormat("sharegpt", ("conversations",), shape='{"conversations": [{"from": ..., "value": ...}]}', flat=False),
    RowFormat("preference", ("chosen", "rejected"), ("prompt",), shape="prompt (optional), chosen, rejected"),
    RowFormat("openai_preference", ("input", "preferred_output", "non_preferred_output"), flat=False,
              shape='{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}'),
)}
KNOWN_SHAPES = " / ".join(f.shape for f in FORMATS.values())
EMPTY_REASONS = {
    "output": "is an empty answer: there is nothing to learn",
    "completion": "is an empty answer: there is nothing to learn",
    "prompt": "is empty (rows without a prompt belong in the text format)",
}


@dataclass(frozen=True)
class TextRow:
    """Text trained without a chat template: the prompt is context, the completion (then EOS) is learnt.

    A `text` row is all completion; a `completion` row always has a prompt.
    """

    prompt: str
    completion: str
    line_number: int

    @property
    def reference_answer(self) -> str:
        return self.completion


TrainingRow = ChatRow | TextRow
AnyRow = TrainingRow | PreferenceRow  # what a dataset file holds: SFT rows, or preference rows for DPO/ORPO


@dataclass(frozen=True)
class Record:
    """One row as read from the file, before its format is checked."""

    number: int  # 1-based line (JSONL, CSV) or row (Parquet); 0 for the file as a whole
    fields: object = None
    problem: FieldError | None = None


@dataclass
class RecordSource:
    kind: str  # "jsonl" | "csv" | "parquet"
    records: Iterator[Record]
    columns_format: str | None = None  # what the CSV header or Parquet schema names

    def locate(self, number: int) -> str:
        """Where a record is, as its error names it; "" for the file as a whole."""
        if number == 0:
            return ""
        return f"row {number}" if self.kind == "parquet" else f"line {number}"


def check_format_name(data_format: str | None) -> str | None:
    """The override as a format name, or None for automatic detection."""
    if data_format is None or data_format in AUTO:
        return None
    if data_format not in FORMATS:
        raise DatasetError(f"unknown data format {data_format!r}: expected auto or one of {', '.join(FORMATS)}")
    return data_format


def detect_row_format(keys: Iterable[object]) -> str | None:
    """The first format any of whose fields are present: a row with a typo still gets a precise error."""
    present = set(keys)
    # The format naming most of the keys wins (the first on a tie): prompt/chosen is a preference
    # row missing its rejected answer, not a completion row.
    scores = [(len(present & set(f.fields)), f.name) for f in FORMATS.values()]
    best = max(scores, key=lambda score: score[0])
    return best[1] if best[0] else None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", bool: "true/false", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _string(record: dict[str, object], name: str, *, blank_ok: bool = False) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(name, f"must be a string, got {_json_type(value)}")
    if not blank_ok and not value.strip():
        raise FieldError(name, EMPTY_REASONS.get(name, "is empty"))
    return value


def _check_keys(record: dict[str, object], fmt: RowFormat) -> None:
    missing = [k for k in fmt.required if record.get(k) is None]
    if missing:
        raise FieldError(missing[0], f"missing; the {fmt.name} format has {fmt.shape}")
    unknown = [k for k in record if k not in fmt.fields]
    if unknown:
        raise FieldError("row", f"unsupported key(s) {describe_keys(unknown)}; the {fmt.name} format has {fmt.shape}")


def _instruction_row(record: dict[str, object], line_number: int) -> ChatRow:
    instruction, extra = _string(record, "instruction"), _string(record, "input", blank_ok=True)
    output = _string(record, "output")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return ChatRow((Message("user", user), Message("assistant", output)), line_number)


def _completion_row(record: dict[str, object], line_number: int) -> TextRow:
    return TextRow(_string(record, "prompt"), _string(record, "completion"), line_number)


def _text_row(record: dict[str, object], line_number: int) -> TextRow:
    return TextRow("", _string(record, "text"), line_number)


PARSERS = {"chat": parse_openai_chat, "instruction": _instruction_row, "completion": _completion_row,
           "text": _text_row, "sharegpt": parse_sharegpt, "preference": parse_trl_preference,
           "openai_preference": parse_openai_preference}


@dataclass
class RowParser:
    """Turns records into training rows of one format: the override, else the first one seen."""

    requested: str | None = None
    data_format: str | None = None
    decided_by: str = ""

    @classmethod
    def for_source(cls, source: RecordSource, requested: str | None) -> RowParser:
        requested = check_format_name(requested)
        decided = requested or source.columns_format
        return cls(requested, decided, "the header" if source.kind == "csv" else "the columns")

    def parse(self, record: Record, where: str) -> TrainingRow:
        if record.problem is not None:
            raise record.problem
        fields = record.fields
        if not isinstance(fields, dict):
            raise FieldError("row", f"must be a JSON object, got {_json_type(fields)}")
        unencodable = unencodable_field(fields)
        if unencodable is not None:
            raise FieldError(unencodable, "holds a lone UTF-16 surrogate (e.g. \\ud800): not valid Unicode text")
        found = detect_row_format(fields)
        if self.data_format is None:
            if found is None:
                raise FieldError("row", f"cannot tell the format from its {len(fields)} key(s): "
                                        f"expected {KNOWN_SHAPES}")
            self.data_format, self.decided_by = found, where
        elif self.requested is None and found not in (None, self.data_format):
            expected = FORMATS[self.data_format]
            raise FieldError("row", f"has the {found} format ({FORMATS[found].shape}) but {self.decided_by} set "
                                    f"the file's format to {expected.name}; every row must share one format: "
                                    f"expected {expected.shape}")
        _check_keys(fields, FORMATS[self.data_format])
        return PARSERS[self.data_format](fields, record.number)


# Reading records --------------------------------------------------------------------------


def _file_problem(kind: str, problem: FieldError | None, number: int = 0) -> RecordSource:
    """A source whose only record is what makes the whole file unreadable (number: the CSV header's line)."""
    return RecordSource(kind, iter([Record(number, problem=problem)]))


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines; None for one over MAX_LINE_BYTES, whose rest is skipped without holding it."""
    while line := handle.readline(MAX_LINE_BYTES + 1):
        if len(line) <= MAX_LINE_BYTES:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = handle.readline(1 << 16)
        yield None


def _numbered(lines: Iterable[bytes | None]) -> Iterator[Line]:
    for number, raw in enumerate(lines, start=1):
        # Editors on Windows (and Excel's "CSV UTF-8") start the file with a byte order mark.
        yield number, raw.removeprefix(UTF8_BOM) if number == 1 and raw is not None else raw


def _too_long() -> FieldError:
    return FieldError("row", f"longer than {MAX_LINE_BYTES} bytes")


def _not_utf8(error: UnicodeDecodeError) -> FieldError:
    return FieldError("encoding", f"not valid UTF-8 (byte {error.start})")


def _jsonl_records(lines: Iterable[Line]) -> Iterator[Record]:
    for number, raw in lines:
        if raw is None:
            yield Record(number, problem=_too_long())
            continue
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield Record(number, problem=_not_utf8(error))
            continue
        try:
            yield Record(number, json.loads(text))
        except json.JSONDecodeError as error:
            yield Record(number, problem=FieldError("json", f"not valid JSON ({error.msg} at column {error.colno})"))
        except RecursionError:  # [[[[... a megabyte deep
            yield Record(number, problem=FieldError("json", "not valid JSON (nested too deeply)"))
        except ValueError as error:  # e.g. a number of more than 4300 digits
            yield Record(number, problem=FieldError("json", f"not valid JSON ({error})"))


@dataclass
class _CsvText:
    """The lines as text for the csv module, remembering which were too long or not UTF-8."""

    lines: Iterator[Line]
    problems: dict[int, FieldError] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        for number, raw in self.lines:
            if raw is None:
                self.problems[number] = _too_long()
                yield "\n"
                continue
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                self.problems[number] = _not_utf8(error)
                yield raw.decode("utf-8", errors="replace")

    def problem_in(self, first: int, last: int) -> FieldError | None:
        return next((self.problems[n] for n in range(first, last + 1) if n in self.problems), None)


def _csv_rows(text: _CsvText) -> Iterator[CsvRow]:
    """(first line, cells, problem) per non-blank CSV record; a quoted cell may span lines."""
    # strict: an unclosed quote is an error at its line, not a cell that silently swallows the rest.
    reader = csv.reader(iter(text), strict=True)
    while True:
        first = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield first, None, FieldError("csv", str(error))
            continue
        problem = text.problem_in(first, reader.line_num)
        if problem is not None:
            yield first, None, problem
        elif any(cell.strip() for cell in cells):  # spreadsheets end files with rows of empty cells
            yield first, cells, None


def _columns_format(columns: list[str], requested: str | None, kind: str) -> str:
    """The format a CSV header or Parquet schema names; FieldError when it names none or the wrong one."""
    where = "header" if kind == "csv" else "columns"
    name = requested or detect_row_format(columns)
    if name is None:
        # Not the cells: in a headerless CSV this "header" is the first row of data.
        raise FieldError(where, f"neither a JSON object (JSONL) nor a header naming a known format's columns "
                                f"({KNOWN_SHAPES}); got {len(columns)} cell(s) naming none of them")
    fmt = FORMATS[name]
    if not fmt.flat and kind == "csv":
        raise FieldError(where, "chat rows need JSONL or Parquet: a CSV cell cannot hold a list of messages")
    if len(set(columns)) != len(columns):
        raise FieldError(where, "names a column twice")
    missing = [c for c in fmt.required if c not in columns]
    if missing:
        raise FieldError(where, f"missing column(s) {', '.join(missing)}; the {name} format has {fmt.shape}")
    unknown = [c for c in columns if c not in fmt.fields]
    if unknown:
        raise FieldError(where, f"unsupported column(s) {describe_keys(unknown)}; the {name} format has {fmt.shape}")
    return name


def _csv_records(rows: Iterator[CsvRow], columns: list[str]) -> Iterator[Record]:
    for number, cells, problem in rows:
        if problem is not None or cells is None:
            yield Record(number, problem=problem)
        elif len(cells) != len(columns):
            yield Record(number, problem=FieldError("row", f"has {len(cells)} cells, the header has {len(columns)}"))
        else:
            yield Record(number, dict(zip(columns, cells)))


def _csv_source(lines: Iterator[Line], requested: str | None) -> RecordSource:
    # The default cap (128 KiB a cell) would refuse documents JSONL accepts. Process-wide, only ever raised.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    rows = _csv_rows(_CsvText(lines))
    first = next(rows, None)
    if first is None:
        return RecordSource("csv", iter(()))
    number, header, problem = first
    if problem is not None or header is None:
        return _file_problem("csv", problem, number)
    columns = [c.strip() for c in header]
    try:
        return RecordSource("csv", _csv_records(rows, columns), _columns_format(columns, requested, "csv"))
    except FieldError as error:
        return _file_problem("csv", error, number)


def _without_nulls(value: object) -> object:
    """Parquet structs carry every field, null where a row has none: null means absent, as in JSON."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _parquet_records(parquet: Any) -> Iterator[Record]:
    import pyarrow as pa

    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield Record(number, _without_nulls(row))
    except (pa.ArrowException, OSError, ValueError) as error:
        # The error's class, not its text: Arrow's conversion errors quote the cell.
        yield Record(number + 1, problem=FieldError("file", f"unreadable from here on ({type(error).__name__})"))


def _parquet_source(path: Path | BinaryIO, requested: str | None, stack: ExitStack) -> RecordSource:
    try:  # only Parquet datasets pay for importing pyarrow
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return _file_problem("parquet", FieldError("file", "is Parquet, which needs pyarrow"))
    try:
        parquet = stack.enter_context(pq.ParquetFile(path))
        columns = list(parquet.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as error:
        return _file_problem("parquet", FieldError("file", f"not a readable Parquet file ({type(error).__name__})"))
    try:
        return RecordSource("parquet", _parquet_records(parquet), _columns_format(columns, requested, "parquet"))
    except FieldError as error:
        return _file_problem("parquet", error)


def _text_source(lines: Iterator[Line], requested: str | None) -> RecordSource:
    """JSONL when the first non-blank line opens a JSON object, else CSV."""
    peeked: list[Line] = []
    kind = "jsonl"
    for number, raw in lines:
        peeked.append((number, raw))
        if raw is None:
            break
        if raw.strip():
            if number == 1 and raw.startswith(PARQUET_MAGIC):
                return _file_problem("parquet", FieldError("file", "is Parquet: check it from its path, not as lines"))
            kind = "jsonl" if raw.lstrip().startswith(b"{") else "json" if raw.lstrip().startswith(b"[") else "csv"
            break
    rest = chain(peeked, lines)
    if kind == "json":  # one JSON array of rows (Alpaca's files)
        return RecordSource("json", (Record(n, value, problem) for n, value, problem in array_items(rest)))
    return RecordSource("jsonl", _jsonl_records(rest)) if kind == "jsonl" else _csv_source(rest, requested)


@contextmanager
def open_records(source: Path | Iterable[bytes], data_format: str | None = None) -> Iterator[RecordSource]:
    """The records of a dataset file (or of its lines, for JSONL and CSV), streamed."""
    requested = check_format_name(data_format)
    with ExitStack() as stack:
        if isinstance(source, Path):
            # Sealed files (encryption at rest) are decrypted in memory as they are read.
            handle = stack.enter_context(open_plain(source))
            if handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
                handle.seek(0)
                yield _parquet_source(handle if is_decrypting(handle) else source, requested, stack)
                return
            handle.seek(0)
            lines: Iterable[bytes | None] = _bounded_lines(handle)
        else:
            lines = (None if len(raw) > MAX_LINE_BYTES else raw for raw in source)
        yield _text_source(_numbered(lines), requested)


@dataclass(frozen=True)
class Dataset:
    rows: list[TrainingRow]
    data_format: str
    file_kind: str


def read_dataset(path: Path, data_format: str | None = None) -> Dataset:
    """Every row of a dataset file, checked; DatasetError naming the first bad line (or row) and field."""
    rows: list[TrainingRow] = []
    try:
        with open_records(path, data_format) as source:
            parser = RowParser.for_source(source, data_format)
            for record in source.records:
                where = source.locate(record.number)
                try:
                    rows.append(parser.parse(record, where))
                except FieldError as problem:
                    raise DatasetError(f"{path.name} {where + ': ' if where else ''}{problem}") from None
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    if not rows or parser.data_format is None:
        raise DatasetError(f"{path.name} has no rows")
    return Dataset(rows, parser.data_format, source.kind)


def read_chat_jsonl(path: Path) -> list[ChatRow]:
    """Read every row of a chat dataset; raise DatasetError naming the first bad line."""
    return read_dataset(path, "chat").rows  # type: ignore[return-value]  # chat rows only, by the override


def split_validation(rows: list[Row], validation_rows: int, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out `validation_rows` rows chosen by `seed`; both parts keep file order."""
    if validation_rows <= 0:
        raise DatasetError(f"need at least 2 rows to hold out a validation split, got {len(rows)}")
    # A private Random: the split must not depend on (or disturb) any global RNG state.
    chosen = set(random.Random(f"validation-split/{seed}").sample(range(len(rows)), validation_rows))
    train = [row for i, row in enumerate(rows) if i not in chosen]
    validation = [row for i, row in enumerate(rows) if i in chosen]
    return train, validation
