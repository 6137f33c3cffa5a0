"""The inference process's protocol: one JSON request per line on its stdin, one JSON answer per line on its stdout.

    request: {"id": str, "base_model_dir": str, "adapter_dir": str | null, "prompt": str, "system": str | null,
              "max_tokens": int, "temperature": float (0 = greedy), "top_p": float, "stop": [str],
              "seed": int | null, "history": [{"role", "content"}, ...], "raw": bool, "stream": bool}
    answer:  {"id", "text", "tokens", "prompt_tokens", "finish_reason"} or {"id", "error"}

A request with "stream": true is answered by any number of {"id", "delta"} lines, the text as it is
generated, before its answer line; the deltas joined are the answer's text.

The server process writes requests and reads answers (inference/client.py), the inference process
the other way round (inference/process.py); both go through these classes, so the lines have one
shape. Pure Python: the server process imports this and never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_TOKENS_LIMIT = 4096
MAX_STOP_STRINGS = 16


class RequestError(ValueError):
    """The request itself is wrong; the answer says why and the process carries on."""


@dataclass(frozen=True)
class Request:
    id: str
    base_model_dir: Path
    adapter_dir: Path | None
    prompt: str
    system: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # earlier turns, user first, alternating
    raw: bool = False  # the prompt is plain text to continue: no chat template
    stream: bool = False  # send delta lines while generating

    def to_line(self) -> str:
        body = {**asdict(self), "base_model_dir": str(self.base_model_dir),
                "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None}
        return json.dumps(body) + "\n"

    @classmethod
    def parse_line(cls, line: str) -> Request:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RequestError(f"request is not valid JSON: {exc.msg}") from None
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: Any) -> Request:
        if not isinstance(raw, dict):
            raise RequestError("a request must be a JSON object")

        def number(key: str, default: float, low: float, high: float, integer: bool = False) -> Any:
            value = raw.get(key, default)
            if value is None:
                value = default
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
                raise RequestError(f"{key} must be a number in [{low}, {high}]")
            if integer and value != int(value):
                raise RequestError(f"{key} must be a whole number")
            return int(value) if integer else float(value)

        base = raw.get("base_model_dir")
        if not isinstance(base, str) or not (Path(base) / "config.json").is_file():
            raise RequestError(f"base_model_dir {base!r} is not a model directory")
        adapter = raw.get("adapter_dir")
        if adapter is not None and (not isinstance(adapter, str) or not (Path(adapter) / "adapter_config.json").is_file()):
            raise RequestError(f"adapter_dir {adapter!r} is not a PEFT adapter directory")
        prompt, system = raw.get("prompt"), raw.get("system")
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string")
        if system is not None and not isinstance(system, str):
            raise RequestError("system must be a string or null")
        stop = raw.get("stop") or []
        if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(f"stop must be a list of at most {MAX_STOP_STRINGS} non-empty strings")
        seed = raw.get("seed")
        flags = {key: raw.get(key, False) for key in ("raw", "stream")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise RequestError(f"{key} must be true or false")
        history = raw.get("history") or []
        if not isinstance(history, list) or not all(
            isinstance(t, dict) and t.get("role") == ("user", "assistant")[i % 2] and isinstance(t.get("content"), str)
            for i, t in enumerate(history)
        ) or len(history) % 2:
            raise RequestError("history must alternate user and assistant turns, ending with an assistant turn")
        return cls(
            id=str(raw.get("id", "")),
            base_model_dir=Path(base),
            adapter_dir=Path(adapter) if adapter else None,
            prompt=prompt,
            system=system or None,
            max_tokens=number("max_tokens", 256, 1, MAX_TOKENS_LIMIT, integer=True),
            temperature=number("temperature", 0.0, 0.0, 10.0),
            top_p=number("top_p", 1.0, 0.0, 1.0) or 1.0,
            stop=stop,
            seed=number("seed", 0, 0, 2**32 - 1, integer=True) if seed is not None else None,
            history=[{"role": t["role"], "content": t["content"]} for t in history],
            **flags,
        )


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    prompt_tokens: int = 0
    finish_reason: str = "stop"  # or "length": max_tokens ran out first


def request_id(line: str) -> str | None:
    """The id of a request line, as far as it can be read, for an answer to a request that is refused."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    return str(raw["id"]) if isinstance(raw, dict) and raw.get("id") is not None else None


@dataclass(frozen=True)
class Answer:
    """One answer line: a completion, or the error that stopped it."""

    id: str | None
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None

    @classmethod
    def of(cls, request_id: str | None, completion: Completion) -> Answer:
        return cls(request_id, text=completion.text, tokens=completion.tokens, prompt_tokens=completion.prompt_tokens,
                   finish_reason=completion.finish_reason)

    def to_line(self) -> str:
        body: dict[str, Any] = {"id": self.id, "error": self.error} if self.error is not None else \
            {"id": self.id, "text": self.text, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
             "finish_reason": self.finish_reason}
        return json.dumps(body) + "\n"

    @classmethod
    def parse_line(cls, line: str) -> Answer | Delta:
        raw = json.loads(line)
        if "delta" in raw:
            return Delta(raw.get("id"), str(raw["delta"]))
        if "error" in raw:
            return cls(raw.get("id"), error=str(raw["error"]))
        return cls(raw.get("id"), text=str(raw["text"]), tokens=int(raw.get("tokens", 0)),
                   prompt_tokens=int(raw.get("prompt_tokens", 0)), finish_reason=str(raw.get("finish_reason", "stop")))

    def completion(self) -> Completion:
        return Completion(self.text, self.tokens, self.prompt_tokens, self.finish_reason)


@dataclass(frozen=True)
class Delta:
    """A streamed piece of a completion's text."""

    id: str | None
    text: str

    def to_line(self) -> str:
        return json.dumps({"id": self.id, "delta": self.text}) + "\n"
