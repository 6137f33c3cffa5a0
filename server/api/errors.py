"""One table from domain errors to gRPC status codes, applied by a server interceptor.

Anything not in the table is a bug: the client gets INTERNAL with a request id, and the
traceback goes only to the server log under that id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tunevault.server import errors

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.TuneVaultError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    if isinstance(error, errors.TuneVaultError):
        context.abort(STATUS_OF.get(type(error), grpc.StatusCode.INTERNAL), str(error))
    request_id = uuid.uuid4().hex[:12]
    log.exception("request %s (%s) failed", request_id, method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


def _wrap_unary(behaviour: Callable, method: str) -> Callable:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as error:  # noqa: BLE001 - mapped, never swallowed
            _abort(context, error, method)
    return handle


def _wrap_streaming(behaviour: Callable, method: str) -> Callable:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except Exception as error:  # noqa: BLE001
            _abort(context, error, method)
    return handle


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by servicer methods to status codes (see STATUS_OF)."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            return handler  # health and reflection handle their own errors
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_streaming(handler.unary_stream, method))
        return handler._replace(stream_stream=_wrap_streaming(handler.stream_stream, method))
