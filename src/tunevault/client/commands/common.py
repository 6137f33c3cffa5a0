"""What every client command shares: connection flags, the Client they open, output helpers, usage errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from tunevault.client.client import DEFAULT_ADDRESS, Client
from tunevault.v1 import tunevault_pb2 as pb

DATA_FORMATS = ("chat", "instruction", "completion", "text", "sharegpt", "preference", "openai_preference")
TOKEN_ENV = "TUNEVAULT_TOKEN"

Handler = Callable[[argparse.Namespace], int]
# add(name, handler, help) -> the new subcommand's parser, with the connection flags already on it.
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


class UsageError(Exception):
    """A mistake in the command line found before anything is sent; `main` prints it and exits 2."""


def say(message: str) -> None:
    print(message, file=sys.stderr)


def say_deleted(what: str, freed_bytes: int, destroyed_key_id: str, of: str = "") -> None:
    """One wording for every delete: what went, the bytes freed, and the data key destroyed with it."""
    key = f"; destroyed data key {destroyed_key_id}" if destroyed_key_id else ""
    say(f"{what}: deleted {freed_bytes} bytes{of}{key}")


def print_json(message: Any) -> None:
    data = MessageToDict(message, preserving_proto_field_name=True) if hasattr(message, "DESCRIPTOR") else message
    print(json.dumps(data, indent=2, sort_keys=True))


def messages_json(key: str, messages: list[Any]) -> None:
    print_json({key: [MessageToDict(m, preserving_proto_field_name=True) for m in messages]})


def state_name(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def check_file(path: Path) -> Path:
    """A file to upload must be readable before a stream opens: a failure inside the request
    iterator reaches the user as "UNKNOWN: Exception iterating requests!"."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: not readable")
    return path


def token_source(args: argparse.Namespace) -> str:
    """Where the token of this command came from, for error messages: the flag, the environment, or nowhere."""
    if getattr(args, "token", None):
        return "--token"
    return TOKEN_ENV if os.environ.get(TOKEN_ENV) else ""


def connect(args: argparse.Namespace) -> Client:
    # --token wins over the environment; read here, not as the flag's default, so an error can say which it was.
    token = args.token or os.environ.get(TOKEN_ENV) or None
    return Client(args.address, token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                  tls_server_name=args.tls_server_name)


def rpc_error_hint(error: grpc.RpcError, args: argparse.Namespace) -> str:
    """A line after a failed call's status that says what to do, where the status alone does not."""
    source = token_source(args)
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        if not source:
            return (f"no token was given: pass --token TOKEN or set {TOKEN_ENV} (the server prints the first "
                    "admin token once when it starts; `tunevault admin tokens create` makes more)")
        return f"the token from {source} was refused (unknown or revoked): pass another with --token or {TOKEN_ENV}"
    if error.code() == grpc.StatusCode.PERMISSION_DENIED and source:
        return (f"the token from {source} lacks the role for this; "
                "an admin can make one with `tunevault admin tokens create`")
    return ""


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("TUNEVAULT_ADDRESS", DEFAULT_ADDRESS),
                        help="HOST:PORT of the appliance (env TUNEVAULT_ADDRESS)")
    parser.add_argument("--token", default=None, help=f"API token (env {TOKEN_ENV})")
    parser.add_argument("--tls-ca", type=Path, default=os.environ.get("TUNEVAULT_TLS_CA"),
                        help="CA bundle that signed the server certificate: enables TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client private key, for mutual TLS")
    parser.add_argument("--tls-server-name", help="expected server name when it differs from the address")
    parser.add_argument("--json", action="store_true", help="print structured data as JSON")
