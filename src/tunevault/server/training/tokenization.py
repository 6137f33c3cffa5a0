"""Tokenizing training rows and their loss mask: chats through the chat template, plain text without one.

The template is rendered once per prefix: rendering messages[:i] with the generation prompt and
then messages[:i+1] gives the exact characters of assistant answer i (its content, the
end-of-turn token and whatever glue the template adds after it). Those characters are mapped to
tokens through the tokenizer's offsets, so the mask is right however the tokenizer merges text
at the boundaries. Labelled: the answer and its end-of-turn token (so the model learns to stop);
not labelled: everything after that token (e.g. the template's trailing newline), system and
user turns, and the assistant header.

Plain text rows (prompt/completion and text) skip the template: prompt tokens, completion tokens,
EOS; the completion and the EOS are learnt, so the model learns where to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunevault.server.contract.chat_data import ChatRow, DatasetError
from tunevault.server.contract.formats import TextRow, TrainingRow

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


@dataclass(frozen=True)
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the token is context, not answer
    line_number: int
    truncated: bool

    @property
    def label_count(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def answer_spans(tokenizer: Any, row: ChatRow) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character span of each trainable answer."""
    full = _render(tokenizer, row.as_template_input(), generation_prompt=False)
    eos = tokenizer.eos_token
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(row.messages):
        if message.role != "assistant" or not message.trainable:
            continue
        before = _render(tokenizer, row.as_template_input(i), generation_prompt=True)
        through = _render(tokenizer, row.as_template_input(i + 1), generation_prompt=False)
        if not (full.startswith(before) and full.startswith(through) and through.startswith(before)):
            raise DatasetError(
                f"line {row.line_number}: the model's chat template does not render conversations prefix by prefix; "
                "cannot tell the assistant's tokens apart"
            )
        start, end = len(before), len(through)
        # Stop the label span right after the end-of-turn token: the template's glue after it is
        # never generated (generation ends at the token), so it should not be learnt either.
        if eos:
            closing = through.rfind(eos, start)
            if closing != -1:
                end = closing + len(eos)
        spans.append((start, end))
    return full, spans


def tokenize_row(tokenizer: Any, row: ChatRow) -> TokenizedRow:
    """Token ids and labels for one whole conversation."""
    text, spans = answer_spans(tokenizer, row)
    # The template already wrote any BOS/special tokens as text; adding them again would double them.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for index, (char_start, char_end) in enumerate(encoded["offset_mapping"]):
        if char_end > char_start and any(start <= char_start < end for start, end in spans):
            labels[index] = input_ids[index]
    return TokenizedRow(input_ids=input_ids, labels=labels, line_number=row.line_number, truncated=False)


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _bos_prefix(tokenizer: Any) -> list[int]:
    """[BOS] when the tokenizer starts plain text with it (Llama does), else nothing (SmolLM2, GPT-2)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def tokenize_text_row(tokenizer: Any, row: TextRow) -> TokenizedRow:
    """BOS (if the tokenizer uses one) + prompt + completion + EOS; the completion and the EOS are labelled."""
    if tokenizer.eos_token_id is None:
        raise DatasetError("the tokenizer has no EOS token: prompt/completion and text rows need one to end on")
    # Prompt and completion are tokenized apart and the ids joined: tokenizing them as one string
    # can merge the prompt's last characters with the completion's first into one token (e.g.
    # "->" + "x"), leaving no clean boundary to mask at and conditioning training on ids the prompt
    # alone never produces. Joined ids keep the prompt's tokens exactly what generation starts from.
    context = _bos_prefix(tokenizer) + _plain_ids(tokenizer, row.prompt)
    answer = _plain_ids(tokenizer, row.completion) + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * len(context) + answer
    # Nothing predicts the first token, so a prompt-less text row cannot learn it.
    labels[0] = IGNORE_INDEX
    return TokenizedRow(input_ids=context + answer, labels=labels, line_number=row.line_number, truncated=False)


def tokenize_example(tokenizer: Any, row: TrainingRow) -> TokenizedRow:
    """Token ids and labels for any training row."""
    if isinstance(row, TextRow):
        return tokenize_text_row(tokenizer, row)
    return tokenize_row(tokenizer, row)


def truncate_row(row: TokenizedRow, max_seq_len: int) -> TokenizedRow:
    """Cut a row on the right to max_seq_len tokens (answers past the cut lose their labels)."""
    if len(row.input_ids) <= max_seq_len:
        return row
    return TokenizedRow(row.input_ids[:max_seq_len], row.labels[:max_seq_len], row.line_number, truncated=True)


def prompt_ids(tokenizer: Any, row: ChatRow, max_len: int) -> list[int]:
    """The conversation up to its last answer, ending in the assistant header: the accuracy-eval prompt."""
    text = _render(tokenizer, row.as_template_input(len(row.messages) - 1), generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Keep the end: the assistant header and the question matter more than the opening of a long chat.
    return list(ids[-max_len:])


def accuracy_prompt_ids(tokenizer: Any, row: TrainingRow, max_len: int) -> list[int] | None:
    """The ids exact-match accuracy generates from, or None for a text row (it has no question)."""
    if isinstance(row, ChatRow):
        return prompt_ids(tokenizer, row, max_len)
    if not row.prompt:
        return None
    return (_bos_prefix(tokenizer) + _plain_ids(tokenizer, row.prompt))[-max_len:]
