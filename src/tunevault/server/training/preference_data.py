"""A preference job's data: pairs read, split, tokenized and truncated the way SFT rows are.

Each pair is two ordinary tokenized rows (prompt + chosen, prompt + rejected) with only the
answer labelled, so the chat template, the loss mask and truncation are the SFT ones. The JobData
the rest of the trainer reads (stats, warnings, eval loss) holds the chosen rows: eval loss is
then the chosen answers' loss, which DPO should not let rise much.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract.chat_data import DatasetError
from tunevault.server.contract.formats import TextRow, read_dataset, split_validation
from tunevault.server.contract.preference_rows import PreferenceRow, TextPair
from tunevault.server.training.job_data import JobData
from tunevault.server.training.tokenization import TokenizedRow, tokenize_example, truncate_row


@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedRow
    rejected: TokenizedRow

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass(frozen=True)
class PreferenceData:
    job: JobData  # chosen rows, for the trainer's stats, warnings and eval loss
    train: list[TokenizedPair]
    validation: list[TokenizedPair]


def _rows(path: Path, data_format: str | None) -> tuple[list[PreferenceRow], str]:
    dataset = read_dataset(path, data_format)
    if not all(isinstance(row, PreferenceRow) for row in dataset.rows):
        raise DatasetError(f"{path.name} holds {dataset.data_format} rows; DPO and ORPO need prompt/chosen/rejected "
                           "rows (or OpenAI DPO rows)")
    return dataset.rows, dataset.data_format  # type: ignore[return-value]  # checked just above


def _tokenized(tokenizer: Any, row: PreferenceRow, answer: str) -> TokenizedRow:
    made = row.answer_row(answer)
    if isinstance(made, TextPair):
        made = TextRow(made.prompt, made.completion, made.line_number)
    return tokenize_example(tokenizer, made)


def _pair(tokenizer: Any, row: PreferenceRow) -> TokenizedPair:
    return TokenizedPair(_tokenized(tokenizer, row, row.chosen), _tokenized(tokenizer, row, row.rejected))


def _cut(pairs: list[TokenizedPair], max_seq_len: int) -> list[TokenizedPair]:
    """Truncated pairs; a pair loses out when either answer has no token left (nothing to compare)."""
    cut = [TokenizedPair(truncate_row(p.chosen, max_seq_len), truncate_row(p.rejected, max_seq_len)) for p in pairs]
    return [p for p in cut if p.chosen.label_count and p.rejected.label_count]


def prepare_preference_data(tokenizer: Any, train_file: Path, validation_file: Path | None,
                            resolved: hp.ResolvedHyperparameters, data_format: str | None = None,
                            validation_data_format: str | None = None) -> PreferenceData:
    """Pairs to train and evaluate on, and the JobData view of their chosen rows."""
    file_rows, found_format = _rows(train_file, data_format)
    if validation_file is not None:
        train_rows, validation_rows = file_rows, _rows(validation_file, validation_data_format)[0]
    else:
        held_out = hp.validation_split_size(len(file_rows), resolved.validation_fraction)
        train_rows, validation_rows = split_validation(file_rows, held_out, resolved.seed)
    train_full = [_pair(tokenizer, r) for r in train_rows]
    validation_full = [_pair(tokenizer, r) for r in validation_rows]
    resolved = resolved.with_data(max(p.length for p in train_full + validation_full))
    assert resolved.max_seq_len is not None
    train, validation = _cut(train_full, resolved.max_seq_len), _cut(validation_full, resolved.max_seq_len)
    if not train or not validation:
        which = "training" if not train else "validation"
        raise DatasetError(f"no {which} pair has answer tokens within max_seq_len={resolved.max_seq_len}; "
                           "raise max_seq_len or shorten the prompts")
    truncated = sum(r.truncated for p in train + validation for r in (p.chosen, p.rejected))
    job = JobData(train=[p.chosen for p in train], validation=[p.chosen for p in validation], accuracy_examples=[],
                  hyperparameters=resolved, dropped_train_rows=len(train_full) - len(train), truncated_rows=truncated,
                  data_format=found_format,
                  rows_learning_to_stop=sum(1 for p in train if tokenizer.eos_token_id in p.chosen.labels),
                  overlap_rows=len({tuple(p.chosen.input_ids) for p in validation}
                                   & {tuple(p.chosen.input_ids) for p in train}))
    return PreferenceData(job, train, validation)
