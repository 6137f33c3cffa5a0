"""Preference rows: a prompt with a preferred and a rejected answer, for DPO and ORPO.

Accepted unchanged from the tools that write them:

  openai_preference  {"input": {"messages": [...]}, "preferred_output": [{assistant}],
                      "non_preferred_output": [{assistant}]}            OpenAI DPO fine-tuning
  preference         prompt, chosen, rejected                            TRL, in either form:
                     strings (plain text, no chat template), or lists of messages (conversational;
                     chosen/rejected are then the assistant turn). Without a prompt, the prompt is
                     what chosen and rejected share (TRL's implicit prompt).

A row becomes two ordinary training rows (prompt + chosen, prompt + rejected) with only the answer
labelled, so tokenization and truncation are the SFT ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tunevault.server.contract.chat_data import ChatRow, FieldError, Message, parse_chat_record
from tunevault.server.contract.chat_variants import plain_message

PREFERENCE_FORMATS = ("preference", "openai_preference")


@dataclass(frozen=True)
class TextPair:
    """A plain-text answer after a plain-text prompt (duplicates formats.TextRow's fields, which
    cannot be imported here without a cycle; formats turns it into a TextRow)."""

    prompt: str
    completion: str
    line_number: int


@dataclass(frozen=True)
class PreferenceRow:
    """A prompt (a conversation, or plain text when `templated` is False) and two answers to it."""

    prompt: tuple[Message, ...] | str
    chosen: str
    rejected: str
    line_number: int

    @property
    def templated(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def reference_answer(self) -> str:
        return self.chosen

    def answer_row(self, answer: str) -> ChatRow | TextPair:
        """The prompt followed by `answer`, with only `answer` to be learnt (or scored)."""
        if isinstance(self.prompt, str):
            return TextPair(self.prompt, answer, self.line_number)
        context = tuple(Message(m.role, m.content, trainable=False) for m in self.prompt)
        return ChatRow(context + (Message("assistant", answer),), self.line_number)


def _answer(field: str, value: object) -> str:
    """One answer: a string, or a list holding the one assistant message (tool calls allowed)."""
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(field, "is an empty answer: there is nothing to compare")
        return value
    if not isinstance(value, list) or len(value) != 1:
        raise FieldError(field, "must be a string or a list holding one assistant message")
    message = plain_message(0, value[0], field)
    if not isinstance(message, dict) or message.get("role") != "assistant" or set(message) - {"role", "content"}:
        raise FieldError(f"{field}[0]", 'must be {"role": "assistant", "content": ...}')
    return _answer(f"{field}[0].content", message.get("content"))


def _prompt_messages(field: str, value: object) -> tuple[Message, ...]:
    """A conversation that ends where the answer begins: checked as a chat row without its answer."""
    if not isinstance(value, list) or not value:
        raise FieldError(field, "must be a non-empty list of messages")
    plain = [plain_message(i, m, field) for i, m in enumerate(value)]
    if isinstance(plain[-1], dict) and plain[-1].get("role") == "assistant":
        raise FieldError(field, "must end with the user's turn: the answers are in chosen/rejected")
    try:
        checked = parse_chat_record({"messages": [*plain, {"role": "assistant", "content": "-"}]}, 0)
    except FieldError as problem:
        raise FieldError(problem.field.replace("messages", field, 1), problem.reason) from None
    return checked.messages[:-1]


def _shared_prefix(chosen: list[object], rejected: list[object]) -> int:
    count = 0
    while count < min(len(chosen), len(rejected)) - 1 and chosen[count] == rejected[count]:
        count += 1
    return count


def _implicit_prompt(chosen: object, rejected: object, line_number: int) -> PreferenceRow:
    """TRL's implicit prompt: chosen and rejected are whole conversations (or texts) sharing their start."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        cut = len(os.path.commonprefix([chosen, rejected]))
        # Back to a word boundary: "The answer is 4" / "The answer is 5" share "The answer is ".
        cut = chosen.rfind(" ", 0, cut) + 1 if 0 < cut < min(len(chosen), len(rejected)) else cut
        return PreferenceRow(chosen[:cut], _answer("chosen", chosen[cut:]), _answer("rejected", rejected[cut:]),
                             line_number)
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise FieldError("chosen", "chosen and rejected must both be strings or both lists of messages")
    shared = _shared_prefix(chosen, rejected)
    if shared == 0:
        raise FieldError("prompt", "missing, and chosen and rejected share no opening messages to take it from")
    if len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise FieldError("chosen", "without a prompt, chosen and rejected must differ only in their last message")
    prompt = _prompt_messages("chosen", chosen[:shared])
    return PreferenceRow(prompt, _answer("chosen", chosen[-1:]), _answer("rejected", rejected[-1:]), line_number)


def _distinct(row: PreferenceRow) -> PreferenceRow:
    if row.chosen == row.rejected:
        raise FieldError("rejected", "is the same answer as the preferred one: there is no preference to learn")
    return row


def parse_trl_preference(record: dict[str, object], line_number: int) -> PreferenceRow:
    """A TRL prompt/chosen/rejected row, string or conversational."""
    return _distinct(_trl_preference(record, line_number))


def _trl_preference(record: dict[str, object], line_number: int) -> PreferenceRow:
    prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if prompt is None:
        return _implicit_prompt(chosen, rejected, line_number)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise FieldError("prompt", "is empty")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise FieldError("chosen", "must be a string when the prompt is a string")
        return PreferenceRow(prompt, _answer("chosen", chosen), _answer("rejected", rejected), line_number)
    messages = _prompt_messages("prompt", prompt)
    return PreferenceRow(messages, _answer("chosen", chosen), _answer("rejected", rejected), line_number)


def parse_openai_preference(record: dict[str, object], line_number: int) -> PreferenceRow:
    """An OpenAI DPO row: input.messages, then one preferred and one non-preferred assistant message."""
    given = record.get("input")
    if not isinstance(given, dict):
        raise FieldError("input", 'must be an object with "messages"')
    unknown = set(given) - {"messages", "tools", "parallel_tool_calls"}
    if unknown:
        raise FieldError("input", f"unsupported key(s) {', '.join(sorted(map(str, unknown)))}")
    if given.get("tools") is not None and not isinstance(given.get("tools"), list):
        raise FieldError("input.tools", "must be a list")
    messages = _prompt_messages("input.messages", given.get("messages"))
    preferred = _answer("preferred_output", record.get("preferred_output"))
    rejected = _answer("non_preferred_output", record.get("non_preferred_output"))
    return _distinct(PreferenceRow(messages, preferred, rejected, line_number))
