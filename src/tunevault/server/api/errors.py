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

from tunevault.server import errors, logs
from tunevault.server.api.handlers import wrap

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.TuneVaultError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


# A status message travels in an HTTP/2 trailer: one of tens of KB ends the stream
# ("Stream removed") instead of reaching the client, so a longer one is cut.
MAX_DETAILS_CHARS = 1000


def bounded_details(message: str) -> str:
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return message[:MAX_DETAILS_CHARS] + " ... (cut)"


def abort(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the call with the error's status; INTERNAL (and a logged traceback) for a bug."""
    if context.code() not in (None, grpc.StatusCode.OK):
        raise error  # already aborted further in; that exception is gRPC's own signal
    if isinstance(error, grpc.RpcError) and not context.is_active():
        # The client cancelled, or its deadline passed, while we read its stream: gRPC's own
        # signal, re-raised as is so that gRPC ends the call quietly. Ordinary, not a bug.
        log.info("client went away: %s", gone_code(context).name)
        raise error
    if isinstance(error, errors.TuneVaultError):
        code = STATUS_OF.get(type(error), grpc.StatusCode.INTERNAL)
        details = bounded_details(str(error))
        log.info("-> %s: %s", code.name, details)
        context.abort(code, details)
    log.error("bug while serving a request", exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {logs.request_id.get()})")


def gone_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """Why a call whose client went away ended: its deadline passed, or it was cancelled."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


def _start_request(context: grpc.ServicerContext) -> None:
    # A client-chosen id (x-request-id) ties our log to theirs; otherwise a fresh one.
    given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
    usable = given and len(given) <= 64 and given.isascii() and given.isprintable()
    logs.request_id.set(given if usable else uuid.uuid4().hex[:16])


def _unary(behaviour: Callable, request: Any, context: grpc.ServicerContext) -> Any:
    _start_request(context)
    try:
        return behaviour(request, context)
    except Exception as error:  # noqa: BLE001 - mapped, never swallowed
        abort(context, error)


def _stream(behaviour: Callable, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    _start_request(context)
    try:
        yield from behaviour(request, context)
    except Exception as error:  # noqa: BLE001
        abort(context, error)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by servicer methods (and inner interceptors) to status codes."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            return handler  # health and reflection handle their own errors
        return wrap(handler, _unary, _stream)
