"""The HTTP server: OpenAI's routes, each a call of the gRPC service over a private unix socket.

Every request goes through the gRPC server's own interceptors (bearer token, role, rate limit,
tenant scope, audit, metrics, error mapping), so the HTTP door cannot grant what gRPC refuses:
the gateway only changes shapes. The caller's `Authorization` header is passed on unchanged.

    GET  /v1/models, /v1/models/{id}   base models and the caller's SUCCEEDED jobs
    POST /v1/chat/completions          messages -> system, history and prompt
    POST /v1/completions               a prompt continued as plain text (GenerateRequest.raw)

Streaming is server-sent events in chunked transfer encoding, ending with `data: [DONE]`; a
client that goes away cancels its gRPC call.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from tunevault.server.api.auth import FORWARDED_PEER_METADATA
from tunevault.server.openai_gateway import requests, responses
from tunevault.v1 import tunevault_pb2 as pb
from tunevault.v1 import tunevault_pb2_grpc as pb_grpc

log = logging.getLogger("tunevault.openai")

MAX_BODY_BYTES = 4 * 1024 * 1024
CALL_TIMEOUT_SECONDS = 600


class Gateway:
    """An HTTP(S) server on `listen` in front of the gRPC service at `grpc_target`."""

    def __init__(self, listen: str, grpc_target: str, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        self.channel = grpc.insecure_channel(grpc_target)
        self.stub = pb_grpc.TuneVaultStub(self.channel)
        self.httpd = (_Server6 if ":" in host else _Server)((host, int(port)), _Handler)
        self.httpd.gateway = self
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="openai-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.channel.close()


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The gRPC port's certificate for HTTPS too; with a client CA, clients must present a certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    gateway: Gateway

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, ssl.SSLError)):
            # A client hanging up or failing the TLS handshake is its business, not an operator's alarm.
            log.info("HTTP client %s: %s", client_address[0], error)
        else:
            log.exception("HTTP request from %s failed", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6  # --openai-listen [::]:8000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tunevault"
    timeout = 120  # seconds a socket read or write may wait: idle keep-alive connections do not pile up
    server: _Server

    @property
    def gateway(self) -> Gateway:
        return self.server.gateway

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)  # no bodies: they may hold patient data

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._call(lambda: self._send_json(200, {"object": "list", "data": self._models()}))
        elif path.startswith("/v1/models/"):
            self._call(lambda: self._one_model(path.removeprefix("/v1/models/")))
        else:
            self._not_found()

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/chat/completions":
            self._complete(requests.parse_chat, chat=True)
        elif path == "/v1/completions":
            self._complete(requests.parse_completion, chat=False)
        else:
            self._drain_body()
            self._not_found()

    # Routes --------------------------------------------------------------------------

    def _complete(self, parse: Any, chat: bool) -> None:
        try:
            parsed = parse(self._json_body())
        except requests.BadRequest as error:
            self._send_json(400, responses.error_body(str(error), "invalid_request_error", error.param))
            return
        answer = responses.Answer(parsed.model, chat)
        self._call(lambda: self._answer(parsed, answer))

    def _answer(self, parsed: requests.Parsed, answer: responses.Answer) -> None:
        try:
            request = self._by_job_name(parsed.generate)
        except requests.BadRequest as error:
            self._send_json(400, responses.error_body(str(error), "invalid_request_error", error.param))
            return
        if request is None:
            self._send_json(404, responses.model_not_found(parsed.model))
            return
        if parsed.stream:
            self._stream(request, parsed.include_usage, answer)
        else:
            self._send_json(200, answer.whole(
                self.gateway.stub.Generate(request, metadata=self._metadata(), timeout=CALL_TIMEOUT_SECONDS)))

    def _by_job_name(self, request: pb.GenerateRequest) -> pb.GenerateRequest | None:
        """A `model` that is no base model may be a job's name (`submit --name`): then that job's adapter.

        None when it is neither: OpenAI answers an unknown model with 404 (gRPC's Generate says
        INVALID_ARGUMENT for its base_model field, naming the server's model store)."""
        if not request.base_model:
            return request
        listed = self.gateway.stub.ListModels(pb.ListModelsRequest(), metadata=self._metadata(), timeout=60)
        if request.base_model in {m.name for m in listed.models}:
            return request
        named = [job.id for job in self._succeeded_jobs() if job.display_name == request.base_model]
        if len(named) > 1:
            raise requests.BadRequest(f"{len(named)} SUCCEEDED jobs are named {request.base_model!r} "
                                      f"({', '.join(named)}): give the job id as model", "model")
        if not named:
            return None
        request = pb.GenerateRequest.FromString(request.SerializeToString())
        request.job_id = named[0]
        request.ClearField("base_model")
        return request

    def _stream(self, request: pb.GenerateRequest, include_usage: bool, answer: responses.Answer) -> None:
        call = self.gateway.stub.GenerateStream(request, metadata=self._metadata(), timeout=CALL_TIMEOUT_SECONDS)
        pieces = iter(call)
        first = next(pieces, None)  # a refusal (bad token, unknown model) raises here, before any 200 is sent
        if first is None:  # the service always ends with a closing message; this would be a fault
            self._send_json(502, responses.error_body("the stream ended without an answer", "server_error"))
            return
        self._start_events()
        try:
            for event in self._events(answer, include_usage, first, pieces):
                self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except OSError:
            call.cancel()  # the client went away: stop generating for nobody
            self.close_connection = True
        except grpc.RpcError as error:
            # Already streaming, so the status line is sent: report it as OpenAI does mid-stream.
            _, body = responses.rpc_error(error)
            self._write_chunk(f"data: {json.dumps(body)}\n\n".encode())
            self._write_chunk(b"")

    @staticmethod
    def _events(answer: responses.Answer, include_usage: bool, first: pb.GenerateStreamResponse,
                rest: Iterator[pb.GenerateStreamResponse]) -> Iterator[dict]:
        opening = answer.first_chunk()
        if opening is not None:
            yield opening
        yield answer.chunk(first)
        last = first
        for piece in rest:
            last = piece
            yield answer.chunk(piece)
        if include_usage:
            yield answer.usage_chunk(last)

    def _models(self) -> list[dict]:
        listed = self.gateway.stub.ListModels(pb.ListModelsRequest(), metadata=self._metadata(), timeout=60)
        return [responses.model_entry(m.name, 0, "tunevault") for m in listed.models] + [
            responses.model_entry(j.id, j.created_at.seconds, j.tenant or "tunevault") for j in self._succeeded_jobs()]

    def _succeeded_jobs(self) -> Iterator[pb.Job]:
        """The caller's SUCCEEDED jobs (an admin's: every tenant's), page by page."""
        token = ""
        while True:
            page = self.gateway.stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_SUCCEEDED], page_size=500,
                                                                 page_token=token), metadata=self._metadata(), timeout=60)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def _one_model(self, model_id: str) -> None:
        found = next((m for m in self._models() if m["id"] == model_id), None)
        if found is None:
            self._send_json(404, responses.model_not_found(model_id))
        else:
            self._send_json(200, found)

    # Plumbing ------------------------------------------------------------------------

    def _call(self, action: Any) -> None:
        """Runs a route; a gRPC refusal becomes OpenAI's error body with the matching HTTP status."""
        try:
            action()
        except grpc.RpcError as error:
            status, body = responses.rpc_error(error)
            self._send_json(status, body)

    def _metadata(self) -> list[tuple[str, str]]:
        metadata = [(FORWARDED_PEER_METADATA, f"{self.client_address[0]}:{self.client_address[1]}")]
        # Passed on as given (several headers too): the gRPC auth interceptor judges them.
        metadata += [("authorization", value) for value in self.headers.get_all("Authorization") or []]
        return metadata

    def _json_body(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise requests.BadRequest("send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise requests.BadRequest("Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            raise requests.BadRequest(f"the request body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise requests.BadRequest(f"the request body is not valid JSON: {error}") from None

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) <= MAX_BODY_BYTES:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _not_found(self) -> None:
        self._send_json(404, responses.error_body(f"no route {self.command} {self.path}", "invalid_request_error"))

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status, _reason(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else ""
