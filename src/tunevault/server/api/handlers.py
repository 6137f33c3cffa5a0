"""Wrapping a gRPC method handler's behaviour, whatever its kind (unary or streaming)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

# around(behaviour, request, context) for unary kinds; the streaming form yields.
UnaryAround = Callable[[Callable, Any, grpc.ServicerContext], Any]
StreamAround = Callable[[Callable, Any, grpc.ServicerContext], Iterator[Any]]


def wrap(handler: grpc.RpcMethodHandler, unary: UnaryAround, stream: StreamAround) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour runs inside `unary` or `stream`."""
    def unary_behaviour(behaviour: Callable) -> Callable:
        return lambda request, context: unary(behaviour, request, context)

    def stream_behaviour(behaviour: Callable) -> Callable:
        return lambda request, context: stream(behaviour, request, context)

    if handler.unary_unary:
        return handler._replace(unary_unary=unary_behaviour(handler.unary_unary))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary_behaviour(handler.stream_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=stream_behaviour(handler.unary_stream))
    return handler._replace(stream_stream=stream_behaviour(handler.stream_stream))


def kind(handler: grpc.RpcMethodHandler) -> str:
    """The grpc_type label of go-grpc-prometheus."""
    if handler.unary_unary:
        return "unary"
    if handler.stream_unary:
        return "client_stream"
    if handler.unary_stream:
        return "server_stream"
    return "bidi_stream"
