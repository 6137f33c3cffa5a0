"""Counts and times every RPC by method and status code (the go-grpc-prometheus metric names)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tunevault.server.api.errors import gone_code
from tunevault.server.api.handlers import kind, wrap
from tunevault.server.metrics import Metrics


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    if code is None:
        # No status set and the client gone: cancelled or timed out, as go-grpc-prometheus counts it.
        return "OK" if context.is_active() else gone_code(context).name
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: it sees the final status code, including ones set by abort()."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        labels = (kind(handler), service, method)
        started_total, handled, seconds = self.metrics.rpc_started, self.metrics.rpc_handled, self.metrics.rpc_seconds

        def unary(behaviour: Callable, request: Any, context: grpc.ServicerContext) -> Any:
            started_total.labels(*labels).inc()
            started = time.perf_counter()
            try:
                return behaviour(request, context)
            finally:
                handled.labels(*labels, _code_name(context)).inc()
                seconds.labels(*labels).observe(time.perf_counter() - started)

        def stream(behaviour: Callable, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started_total.labels(*labels).inc()
            started = time.perf_counter()
            try:
                yield from behaviour(request, context)
            finally:
                handled.labels(*labels, _code_name(context)).inc()
                seconds.labels(*labels).observe(time.perf_counter() - started)

        return wrap(handler, unary, stream)
