"""OpenAI response bodies (whole, streamed chunks, errors) from the gRPC service's answers. Pure functions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc

from tunevault.v1 import tunevault_pb2 as pb

# gRPC status -> (HTTP status, OpenAI error type), as OpenAI's own API answers each case.
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


# GenerateRequest's fields as the OpenAI request names them.
PARAMS = {"base_model": "model", "job_id": "model", "prompt": "messages", "history": "messages",
          "system": "messages"}


def model_not_found(model: str) -> dict[str, Any]:
    """OpenAI's answer (with 404) to a model it does not know."""
    return error_body(f"The model '{model}' does not exist", "invalid_request_error", "model", "model_not_found")


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def rpc_error(error: grpc.RpcError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body for a refused or failed gRPC call."""
    status, kind = STATUS.get(error.code(), (500, "server_error"))
    message = error.details() or error.code().name
    field, _, _ = message.partition(":")
    param = field if error.code() == grpc.StatusCode.INVALID_ARGUMENT and field.isidentifier() else None
    return status, error_body(message, kind, PARAMS.get(param, param), "model_not_found" if status == 404 else None)


class Answer:
    """One request's answer in OpenAI's shapes: chat (`chat.completion`) or legacy (`text_completion`)."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def whole(self, response: pb.GenerateResponse) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": response.text, "refusal": None},
                      "finish_reason": response.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": response.text, "finish_reason": response.finish_reason, "logprobs": None}
        return {**self._head(""), "choices": [choice], "usage": _usage(response)}

    def first_chunk(self) -> dict[str, Any] | None:
        """Chat streams open with the assistant's role and no text, as OpenAI's do."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.chat else None

    def chunk(self, piece: pb.GenerateStreamResponse) -> dict[str, Any]:
        finish = piece.finish_reason or None
        if self.chat:
            return self._chunk({"content": piece.delta} if piece.delta or not finish else {}, finish)
        return self._chunk(piece.delta, finish)

    def usage_chunk(self, last: pb.GenerateStreamResponse) -> dict[str, Any]:
        """stream_options.include_usage: a last chunk with no choices and the counts."""
        return {**self._head(".chunk"), "choices": [], "usage": _usage(last)}

    def _chunk(self, delta: Any, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice.update({"delta": delta} if self.chat else {"text": delta})
        return {**self._head(".chunk"), "choices": [choice]}

    def _head(self, suffix: str) -> dict[str, Any]:
        kind = ("chat.completion" + suffix) if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}


def _usage(response: pb.GenerateResponse | pb.GenerateStreamResponse) -> dict[str, int]:
    return {"prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens,
            "total_tokens": response.prompt_tokens + response.completion_tokens}


def model_entry(model_id: str, created: int, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}
