"""Chat rows as other tools write them, turned into plain OpenAI chat rows before the usual checks.

- OpenAI chat with `name` on a message, assistant `tool_calls` and `tool` result turns, and a
  top-level `tools` list: the tool call is learnt as text (a JSON object per call, the way most
  chat models are taught to call tools), a tool result is shown to the model as a user turn (not
  every chat template knows a `tool` role; a `user` turn renders under all of them), and `name`
  is dropped (templates have no place for it; the role says who spoke).
- ShareGPT `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`.

Every problem is a FieldError naming the field in the file's own terms.
"""

from __future__ import annotations

import json

from tunevault.server.contract.chat_data import ChatRow, FieldError, parse_chat_record

OPENAI_EXTRA_MESSAGE_KEYS = ("name", "tool_calls", "tool_call_id", "refusal")
TOP_LEVEL_TOOL_KEYS = ("tools", "parallel_tool_calls")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}


def _tool_call_text(where: str, calls: object) -> str:
    if not isinstance(calls, list) or not calls:
        raise FieldError(f"{where}.tool_calls", "must be a non-empty list")
    rendered = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise FieldError(f"{at}.function", 'must be an object with a "name" string')
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, (str, dict)):
            raise FieldError(f"{at}.function.arguments", "must be a JSON string or an object")
        rendered.append(json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False))
    return "\n".join(f"<tool_call>{text}</tool_call>" for text in rendered)


def plain_message(index: int, raw: object, where: str = "messages") -> object:
    """One OpenAI message with tool calls, tool results or a name as a plain role/content message."""
    if not isinstance(raw, dict) or not any(k in raw for k in OPENAI_EXTRA_MESSAGE_KEYS) and raw.get("role") != "tool":
        return raw
    at = f"{where}[{index}]"
    message = {k: v for k, v in raw.items() if k not in OPENAI_EXTRA_MESSAGE_KEYS}
    if "tool_calls" in raw:
        if raw.get("role") != "assistant":
            raise FieldError(f"{at}.tool_calls", "is only allowed on assistant messages")
        content = raw.get("content") or ""
        if not isinstance(content, str):
            raise FieldError(f"{at}.content", "must be a string or null")
        calls = _tool_call_text(at, raw["tool_calls"])
        message["content"] = f"{content}\n{calls}" if content.strip() else calls
    if raw.get("role") == "tool":
        content = raw.get("content")
        if not isinstance(content, str):
            raise FieldError(f"{at}.content", "must be a string")
        message = {"role": "user", "content": f"<tool_response>{content}</tool_response>"}
    return message


def _check_tools(record: dict[str, object]) -> None:
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise FieldError("tools", "must be a list")
    if record.get("parallel_tool_calls") not in (None, True, False):
        raise FieldError("parallel_tool_calls", "must be true or false")


def parse_openai_chat(record: dict[str, object], line_number: int) -> ChatRow:
    """An OpenAI chat row, with or without names and tool turns."""
    _check_tools(record)
    plain = {k: v for k, v in record.items() if k not in TOP_LEVEL_TOOL_KEYS}
    messages = plain.get("messages")
    if isinstance(messages, list):
        plain["messages"] = [plain_message(i, m) for i, m in enumerate(messages)]
    return parse_chat_record(plain, line_number)


def sharegpt_messages(turns: object) -> list[object]:
    """ShareGPT turns as OpenAI messages; FieldError naming conversations[i] when one is malformed."""
    if not isinstance(turns, list) or not turns:
        raise FieldError("conversations", "must be a non-empty list")
    messages: list[object] = []
    for index, turn in enumerate(turns):
        at = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise FieldError(at, 'must be an object with "from" and "value"')
        unknown = set(turn) - {"from", "value", "weight"}
        if unknown:
            raise FieldError(at, f"unsupported key(s) {', '.join(sorted(map(str, unknown)))}")
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise FieldError(f"{at}.from", f"must be one of {', '.join(SHAREGPT_ROLES)}")
        if not isinstance(turn.get("value"), str):
            raise FieldError(f"{at}.value", "must be a string")
        message = {"role": role, "content": turn["value"], **({"weight": turn["weight"]} if "weight" in turn else {})}
        messages.append(plain_message(index, message, "conversations"))
    return messages


def parse_sharegpt(record: dict[str, object], line_number: int) -> ChatRow:
    """A ShareGPT row, checked as the chat row it becomes (errors name messages[i] of that chat)."""
    return parse_chat_record({"messages": sharegpt_messages(record.get("conversations"))}, line_number)
