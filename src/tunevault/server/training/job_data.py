"""A job's data, ready to train on: read and check the files, split off validation, tokenize, fix max_seq_len.

Files come in any supported format (contract/formats.py), detected unless the job names one.
The job's hyperparameters arrive resolved; an "auto" max_seq_len is the one choice that waits
for the data: the longest tokenized row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract.chat_data import DatasetError
from tunevault.server.contract.formats import TrainingRow, read_dataset, split_validation
from tunevault.server.training.evaluation import AccuracyExample
from tunevault.server.training.tokenization import (
    IGNORE_INDEX,
    TokenizedRow,
    accuracy_prompt_ids,
    tokenize_example,
    truncate_row,
)


@dataclass(frozen=True)
class JobData:
    train: list[TokenizedRow]
    validation: list[TokenizedRow]
    accuracy_examples: list[AccuracyExample]
    hyperparameters: hp.ResolvedHyperparameters  # max_seq_len filled from the data
    dropped_train_rows: int  # rows whose every answer token fell past max_seq_len
    truncated_rows: int
    data_format: str = "chat"  # of the training file: chat, instruction, completion or text
    duplicate_train_rows: int = 0  # rows whose tokens repeat an earlier row's exactly
    rows_learning_to_stop: int = 0  # training rows whose labels include the token generation stops at
    overlap_rows: int = 0  # validation rows that also appear in the training data

    def warnings(self, stop_token: str) -> list[str]:
        """Problems that do not stop training but that a person should hear about before it runs."""
        found = []
        if self.train and self.rows_learning_to_stop == 0:
            found.append(
                f"no training row teaches the model to end its answer with {stop_token!r} (the token generation "
                "stops at): the adapter may never stop generating; check the chat template and EOS token"
            )
        if self.duplicate_train_rows:
            found.append(f"{self.duplicate_train_rows} training row(s) repeat an earlier row exactly")
        if self.overlap_rows:
            found.append(f"{self.overlap_rows} validation row(s) also appear in the training data: "
                         "eval loss and accuracy will look better than they are")
        if self.dropped_train_rows:
            found.append(f"{self.dropped_train_rows} training row(s) have no answer token within max_seq_len "
                         "and were left out")
        return found

    @property
    def max_seq_len(self) -> int:
        assert self.hyperparameters.max_seq_len is not None  # prepare_job_data fills it
        return self.hyperparameters.max_seq_len

    @property
    def train_tokens(self) -> int:
        return sum(len(r.input_ids) for r in self.train)

    def stats(self) -> dict[str, float]:
        """The figures a person checks before training: sizes and every kind of row problem counted."""
        return {
            "train_rows": len(self.train),
            "validation_rows": len(self.validation),
            "train_tokens": self.train_tokens,
            "validation_tokens": sum(len(r.input_ids) for r in self.validation),
            "dropped_rows": self.dropped_train_rows,
            "truncated_rows": self.truncated_rows,
            "duplicate_rows": self.duplicate_train_rows,
            "validation_rows_in_train": self.overlap_rows,
            "rows_learning_to_stop": self.rows_learning_to_stop,
            "max_seq_len": self.max_seq_len,
        }


def _fits(rows: list[TokenizedRow]) -> list[TokenizedRow]:
    return [r for r in rows if r.label_count > 0]


def _accuracy_examples(tokenizer: Any, rows: list[TrainingRow], limit: int, max_len: int) -> list[AccuracyExample]:
    """Up to `limit` validation rows that ask something (a text row asks nothing), as generation prompts."""
    examples: list[AccuracyExample] = []
    for row in rows:
        if len(examples) >= limit:
            break
        prompt = accuracy_prompt_ids(tokenizer, row, max_len)
        if prompt is not None:
            reference_tokens = len(tokenizer(row.reference_answer, add_special_tokens=False)["input_ids"])
            examples.append(AccuracyExample(prompt, row.reference_answer, reference_tokens))
    return examples


def prepare_job_data(
    tokenizer: Any,
    train_file: Path,
    validation_file: Path | None,
    resolved: hp.ResolvedHyperparameters,
    data_format: str | None = None,
    validation_data_format: str | None = None,
) -> JobData:
    """Everything the training loop and the evals need from the dataset files.

    data_format and validation_data_format name each file's row format; None detects it.
    """
    dataset = read_dataset(train_file, data_format)
    file_rows = dataset.rows
    if validation_file is not None:
        train_rows, validation_rows = file_rows, read_dataset(validation_file, validation_data_format).rows
    else:
        held_out = hp.validation_split_size(len(file_rows), resolved.validation_fraction)
        train_rows, validation_rows = split_validation(file_rows, held_out, resolved.seed)

    train_full = [tokenize_example(tokenizer, row) for row in train_rows]
    validation_full = [tokenize_example(tokenizer, row) for row in validation_rows]
    resolved = resolved.with_data(max(len(r.input_ids) for r in train_full + validation_full))
    assert resolved.max_seq_len is not None
    max_seq_len = resolved.max_seq_len
    train_count = len(train_full)
    if resolved.truncation == "drop":
        # Left out whole, so no row is learnt without its end; counted with the dropped rows. The
        # validation rows are only cut if dropping would leave none to evaluate on.
        train_full = [r for r in train_full if len(r.input_ids) <= max_seq_len]
        validation_full = [r for r in validation_full if len(r.input_ids) <= max_seq_len] or validation_full
    train = [truncate_row(r, max_seq_len) for r in train_full]
    validation = [truncate_row(r, max_seq_len) for r in validation_full]
    truncated = sum(r.truncated for r in train + validation)

    kept_train, kept_validation = _fits(train), _fits(validation)
    if not kept_train:
        raise DatasetError(
            f"no training row has an answer token within max_seq_len={max_seq_len}; "
            "raise max_seq_len or shorten the prompts"
        )
    if not kept_validation:
        raise DatasetError(f"no validation row has an answer token within max_seq_len={max_seq_len}")

    accuracy = _accuracy_examples(tokenizer, validation_rows, resolved.eval_accuracy_max_examples, max_seq_len)
    return JobData(
        train=kept_train,
        validation=kept_validation,
        accuracy_examples=accuracy,
        hyperparameters=resolved,
        dropped_train_rows=train_count - len(kept_train),
        truncated_rows=truncated,
        data_format=dataset.data_format,
        duplicate_train_rows=_duplicates(kept_train),
        rows_learning_to_stop=sum(1 for r in kept_train if tokenizer.eos_token_id in _labelled(r)),
        overlap_rows=len({tuple(r.input_ids) for r in kept_validation} & {tuple(r.input_ids) for r in kept_train}),
    )


def _labelled(row: TokenizedRow) -> set[int]:
    return {label for label in row.labels if label != IGNORE_INDEX}


def _duplicates(rows: list[TokenizedRow]) -> int:
    return len(rows) - len({tuple(r.input_ids) for r in rows})
