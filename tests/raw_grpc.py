"""Calling a live server below the generated stubs: raw bytes to any method path, and its metrics by code."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence

import grpc

from tests.conftest import RunningServer
from tunevault.v1 import tunevault_pb2 as pb

Metadata = Sequence[tuple[str, str]]
TUNEVAULT = pb.DESCRIPTOR.services_by_name["TuneVault"]
# (path, client streaming, server streaming) of every method the server has, health and reflection too.
METHODS: list[tuple[str, bool, bool]] = [
    (f"/{TUNEVAULT.full_name}/{m.name}", m.client_streaming, m.server_streaming) for m in TUNEVAULT.methods
] + [
    ("/grpc.health.v1.Health/Check", False, False),
    ("/grpc.health.v1.Health/Watch", False, True),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True, True),
]
HANDLED = re.compile(r'^grpc_server_handled_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.MULTILINE)


def raw_call(channel: grpc.Channel, path: str, client_streaming: bool, server_streaming: bool,
             payloads: Iterable[bytes], metadata: Metadata = (), timeout: float = 30,
             ) -> tuple[grpc.StatusCode, str]:
    """Sends `payloads` as they are (one for a unary request); returns the status code and details."""
    payloads = list(payloads)
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    kind = kinds[client_streaming, server_streaming]
    call = kind(path, request_serializer=None, response_deserializer=None)
    request = iter(payloads) if client_streaming else (payloads[0] if payloads else b"")
    try:
        result = call(request, metadata=list(metadata), timeout=timeout)
        if server_streaming:
            for _ in result:
                pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details() or ""


def handled_codes(server: RunningServer) -> Counter:
    """grpc_server_handled_total summed by (method, code)."""
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: Counter = Counter()
    for match in HANDLED.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        counts[labels["grpc_method"], labels["grpc_code"]] += float(match["value"])
    return counts
