"""OpenAI request bodies read into GenerateRequests, refused the way OpenAI refuses them (naming the param).

Pure functions, no I/O: gateway.py owns the HTTP side. What the appliance cannot honour (tools,
n > 1, logprobs, penalties) is refused rather than silently ignored, so an app does not get an
answer to a question it did not ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunevault.v1 import tunevault_pb2 as pb

JOB_ID_PREFIX = "job_"
# Accepted and without effect here: bookkeeping fields the OpenAI SDK and apps commonly send.
IGNORED = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
# Accepted only at the value that asks for nothing (OpenAI's defaults).
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "echo": False,
           "best_of": 1, "parallel_tool_calls": None, "tools": None, "tool_choice": None, "functions": None,
           "logit_bias": None, "top_logprobs": None, "suffix": None, "response_format": None, "modalities": None}
COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options", "seed"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt"}
SYSTEM_ROLES = ("system", "developer")
# OpenAI's /v1/completions answers 16 tokens when max_tokens is not given; chat has no such cap,
# so chat takes the service's own default (GenerateRequest.max_tokens = 0).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class BadRequest(ValueError):
    """An OpenAI invalid_request_error: what is wrong and which param."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Parsed:
    """A request as the gateway needs it: the gRPC request, and how to answer it."""

    generate: pb.GenerateRequest
    model: str
    stream: bool
    include_usage: bool


def parse_chat(body: Any) -> Parsed:
    body = _object(body)
    _check_fields(body, CHAT_FIELDS)
    system, history, prompt = _conversation(body.get("messages"))
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    return _parsed(body, prompt=prompt, system=system, history=history, raw=False,
                   max_tokens=_max_tokens(limit, param, default=0))


def parse_completion(body: Any) -> Parsed:
    body = _object(body)
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (or a list of one string); token arrays and batches are not supported",
                         "prompt")
    return _parsed(body, prompt=prompt, system="", history=[], raw=True,
                   max_tokens=_max_tokens(body.get("max_tokens"), "max_tokens", default=COMPLETIONS_DEFAULT_MAX_TOKENS))


def target(model: Any) -> dict[str, str]:
    """GenerateRequest's job_id or base_model for OpenAI's `model`: a job id means its adapter."""
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required: a base model name or a SUCCEEDED job's id", "model")
    return {"job_id": model} if model.startswith(JOB_ID_PREFIX) else {"base_model": model}


def _parsed(body: dict, *, prompt: str, system: str, history: list[pb.ChatTurn], raw: bool,
            max_tokens: int) -> Parsed:
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise BadRequest("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise BadRequest("stream_options is only allowed with stream: true, as an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
        raise BadRequest("seed must be a whole number from 0 to 4294967295", "seed")
    request = pb.GenerateRequest(
        prompt=prompt, system=system, history=history, raw=raw, max_tokens=max_tokens, seed=seed,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=_stop(body.get("stop")), **target(body.get("model")),
    )
    return Parsed(request, body["model"], bool(stream), bool((options or {}).get("include_usage")))


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _check_fields(body: dict, known: set[str]) -> None:
    for key, value in body.items():
        if key in known or key in IGNORED:
            continue
        if key in NEUTRAL:
            if value is None or value == NEUTRAL[key] or (key == "response_format" and value == {"type": "text"}):
                continue
            raise BadRequest(f"{key} is not supported by this server (only {NEUTRAL[key]!r})", key)
        raise BadRequest(f"Unrecognized request argument supplied: {key}", key)


def _conversation(messages: Any) -> tuple[str, list[pb.ChatTurn], str]:
    """(system, history, prompt): leading system messages, then user/assistant turns ending with a user's."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    texts = [(_role(m, i), _content(m, i)) for i, m in enumerate(messages)]
    system_count = next((i for i, (role, _) in enumerate(texts) if role not in SYSTEM_ROLES), len(texts))
    turns = texts[system_count:]
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise BadRequest(f"messages[{system_count + i}].role must be {expected!r}: after the system messages, "
                             "turns alternate user and assistant and end with the user's", f"messages[{system_count + i}].role")
    if not turns or len(turns) % 2 == 0:
        raise BadRequest("the last message must be the user's", f"messages[{len(texts) - 1}].role")
    history = [pb.ChatTurn(role=role, content=text) for role, text in turns[:-1]]
    return "\n\n".join(text for _, text in texts[:system_count]), history, turns[-1][1]


def _role(message: Any, index: int) -> str:
    if not isinstance(message, dict):
        raise BadRequest(f"messages[{index}] must be an object", f"messages[{index}]")
    role = message.get("role")
    if role not in (*SYSTEM_ROLES, "user", "assistant"):
        raise BadRequest(f"messages[{index}].role {role!r} is not supported: system, developer, user or assistant",
                         f"messages[{index}].role")
    if message.get("tool_calls") or message.get("function_call"):
        raise BadRequest("tool calls are not supported by this server", f"messages[{index}].tool_calls")
    return role


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"messages[{index}].content must be a string or an array of text parts",
                     f"messages[{index}].content")


def _max_tokens(value: Any, param: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{param} must be a whole number of at least 1", param)
    return value


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{key} must be a number from {low:g} to {high:g}", key)
    return float(value)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stop = [value] if isinstance(value, str) else value
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or an array of strings", "stop")
    return stop
