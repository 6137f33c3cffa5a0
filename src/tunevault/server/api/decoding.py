"""Parsing request bytes inside the call, so a malformed message is INVALID_ARGUMENT, not INTERNAL.

grpcio's server deserializes a request before any interceptor runs and answers a failure
with INTERNAL ("Exception deserializing request!"), which no interceptor sees or counts.
So every method is served with no request deserializer (raw bytes in), and this
interceptor, the innermost, parses them: a bad message aborts with INVALID_ARGUMENT naming
the request type (never its bytes). Streamed requests are parsed one by one as read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

Parse = Callable[[bytes], Any]


def _type_name(parse: Parse) -> str:
    # A generated stub passes the message class's bound FromString.
    message_class = getattr(parse, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


def _parse_one(parse: Parse, name: str, raw: bytes, context: grpc.ServicerContext) -> Any:
    try:
        return parse(raw)
    except Exception:  # noqa: BLE001 - DecodeError, or whatever a custom deserializer raises
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {name} message")


def _parse_each(parse: Parse, name: str, raws: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
    for raw in raws:
        yield _parse_one(parse, name, raw, context)


def decode_requests(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A copy of `handler` that takes raw bytes and parses them inside the call."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    name = _type_name(parse)

    def decoded(behaviour: Callable) -> Callable:
        if handler.request_streaming:
            return lambda raws, context: behaviour(_parse_each(parse, name, raws, context), context)
        return lambda raw, context: behaviour(_parse_one(parse, name, raw, context), context)

    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    changes = {kind: decoded(getattr(handler, kind)) for kind in kinds if getattr(handler, kind)}
    return handler._replace(request_deserializer=None, **changes)


class DecodeInterceptor(grpc.ServerInterceptor):
    """Innermost interceptor: every method, health and reflection included, parses its own requests."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        return None if handler is None else decode_requests(handler)
