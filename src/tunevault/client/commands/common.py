"""What every client command shares: connection flags, the Client they open, output helpers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from tunevault.client.client import DEFAULT_ADDRESS, Client
from tunevault.v1 import tunevault_pb2 as pb

DATA_FORMATS = ("chat", "instruction", "completion", "text")

Handler = Callable[[argparse.Namespace], int]
# add(name, handler, help) -> the new subcommand's parser, with the connection flags already on it.
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


def say(message: str) -> None:
    print(message, file=sys.stderr)


def print_json(message: Any) -> None:
    data = MessageToDict(message, preserving_proto_field_name=True) if hasattr(message, "DESCRIPTOR") else message
    print(json.dumps(data, indent=2, sort_keys=True))


def messages_json(key: str, messages: list[Any]) -> None:
    print_json({key: [MessageToDict(m, preserving_proto_field_name=True) for m in messages]})


def state_name(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def connect(args: argparse.Namespace) -> Client:
    return Client(args.address, args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                  tls_server_name=args.tls_server_name)


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("TUNEVAULT_ADDRESS", DEFAULT_ADDRESS),
                        help="HOST:PORT of the appliance (env TUNEVAULT_ADDRESS)")
    parser.add_argument("--token", default=os.environ.get("TUNEVAULT_TOKEN"), help="API token (env TUNEVAULT_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, default=os.environ.get("TUNEVAULT_TLS_CA"),
                        help="CA bundle that signed the server certificate: enables TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client private key, for mutual TLS")
    parser.add_argument("--tls-server-name", help="expected server name when it differs from the address")
    parser.add_argument("--json", action="store_true", help="print structured data as JSON")
