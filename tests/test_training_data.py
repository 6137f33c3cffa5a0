"""Training data: JSONL checking with line numbers, the validation split, loss masking with the real chat template, batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL
from tunevault.server.contract.chat_data import DatasetError
from tunevault.server.contract.formats import read_chat_jsonl, split_validation
from tunevault.server.training.batching import BatchStream, collate, epoch_plan
from tunevault.server.training.tokenization import IGNORE_INDEX, prompt_ids, tokenize_row, truncate_row


@pytest.fixture(scope="module")
def tokenizer(models_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(models_dir / DEFAULT_MODEL), local_files_only=True)


def _write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _chat(*turns: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def _labelled_text(tokenizer, row) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(row.input_ids, row.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_only_assistant_answers_and_their_closing_eos_carry_labels(tmp_path: Path, tokenizer) -> None:
    path = _write(tmp_path, [_chat(("system", "Route the note."), ("user", "Chest pain on exertion."),
                                   ("assistant", "cardiology"), ("user", "And an itchy rash?"),
                                   ("assistant", "dermatology"))])
    row = tokenize_row(tokenizer, read_chat_jsonl(path)[0])
    assert _labelled_text(tokenizer, row) == ["cardiology<|im_end|>", "dermatology<|im_end|>"]
    # The token right after each closing <|im_end|> (the template's newline) is context, not answer.
    eos_positions = [i for i, (t, l) in enumerate(zip(row.input_ids, row.labels))
                     if t == tokenizer.eos_token_id and l != IGNORE_INDEX]
    assert all(row.labels[i + 1] == IGNORE_INDEX for i in eos_positions if i + 1 < len(row.labels))
    # The default system prompt of the template is not learnt either (no system message given here).
    default_system = tokenize_row(tokenizer, read_chat_jsonl(_write(tmp_path, [_chat(("user", "hi"), ("assistant", "hello"))]))[0])
    assert _labelled_text(tokenizer, default_system) == ["hello<|im_end|>"]
    assert "SmolLM" in tokenizer.decode(default_system.input_ids)


def test_weight_zero_answers_are_context(tmp_path: Path, tokenizer) -> None:
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "wrong", "weight": 0},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "right"}]}
    tokenized = tokenize_row(tokenizer, read_chat_jsonl(_write(tmp_path, [row]))[0])
    assert _labelled_text(tokenizer, tokenized) == ["right<|im_end|>"]


def test_truncation_cuts_labels_and_prompt_keeps_the_generation_header(tmp_path: Path, tokenizer) -> None:
    chat = read_chat_jsonl(_write(tmp_path, [_chat(("user", "word " * 50), ("assistant", "neurology"))]))[0]
    full = tokenize_row(tokenizer, chat)
    cut = truncate_row(full, 20)
    assert len(cut.input_ids) == 20 and cut.truncated and cut.label_count == 0
    assert full.label_count > 0 and not full.truncated
    prompt = prompt_ids(tokenizer, chat, 1000)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert full.input_ids[: len(prompt)] == prompt


@pytest.mark.parametrize("bad_line, reason", [
    ('{"messages": [', "not valid JSON"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}', "role"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}', "content"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "last message"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": 5}', "tools"),
    ('[1, 2]', "object"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}', "empty answer"),
    ('{"prompt": "x", "completion": "y"}', "messages: missing"),
])
def test_malformed_lines_are_reported_with_their_line_number(tmp_path: Path, bad_line: str, reason: str) -> None:
    good = json.dumps(_chat(("user", "x"), ("assistant", "y")))
    path = _write(tmp_path, [good, "", bad_line])
    with pytest.raises(DatasetError) as caught:
        read_chat_jsonl(path)
    assert "line 3" in str(caught.value) and reason in str(caught.value)


def test_read_chat_jsonl_reads_a_bom_and_weight_zero_empty_context(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "weight": 0},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert [m.trainable for m in read_chat_jsonl(path)[0].messages] == [True, False, True, True]


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no rows"):
        read_chat_jsonl(_write(tmp_path, ["", "  "]))


def test_validation_split_is_deterministic_by_seed(tmp_path: Path) -> None:
    rows = read_chat_jsonl(_write(tmp_path, [_chat(("user", str(i)), ("assistant", "y")) for i in range(30)]))
    first, again, other = (split_validation(rows, 6, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    train, validation = first
    assert len(validation) == 6 and len(train) == 24
    assert {r.line_number for r in train}.isdisjoint(r.line_number for r in validation)


def test_length_grouped_plan_covers_every_row_once_and_is_reproducible() -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(203)]
    plan = epoch_plan(lengths, 8, seed=3, epoch=0)
    assert sorted(i for batch in plan for i in batch) == list(range(203))
    assert plan == epoch_plan(lengths, 8, seed=3, epoch=0)
    assert plan != epoch_plan(lengths, 8, seed=3, epoch=1)
    # Grouping keeps padding well below what a random order would give.
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)
    assert padding < 0.1 * sum(lengths)


def test_batch_stream_resumes_at_its_position(tmp_path: Path, tokenizer) -> None:
    rows = read_chat_jsonl(_write(tmp_path, [_chat(("user", "n" * i), ("assistant", "y")) for i in range(1, 12)]))
    tokenized = [tokenize_row(tokenizer, r) for r in rows]
    stream = BatchStream(tokenized, 3, seed=5, pad_token_id=tokenizer.pad_token_id)
    seen = [stream.next().input_ids for _ in range(9)]  # crosses two epoch boundaries (4 batches each)
    resumed = BatchStream(tokenized, 3, seed=5, pad_token_id=tokenizer.pad_token_id, position=5)
    assert all((resumed.next().input_ids == expected).all() for expected in seen[5:])


def test_collate_pads_on_the_right_with_ignored_labels(tmp_path: Path, tokenizer) -> None:
    rows = read_chat_jsonl(_write(tmp_path, [_chat(("user", "short"), ("assistant", "a")),
                                             _chat(("user", "a much longer note " * 3), ("assistant", "b"))]))
    batch = collate([tokenize_row(tokenizer, r) for r in rows], tokenizer.pad_token_id)
    short = int(batch.attention_mask[0].sum())
    assert (batch.labels[0, short:] == IGNORE_INDEX).all()
    assert batch.tokens == int(batch.attention_mask.sum()) and batch.label_tokens == 4
