"""The `tunevault` command: talk to an appliance (stdout for data, stderr for talk), or run one.

The client commands live in tunevault.client.commands and need only grpcio and protobuf. The
appliance's own commands (serve, audit, models import) are found through one seam,
tunevault.client.server_commands, and say how to install them where they are missing.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from tunevault.client import server_commands
from tunevault.client.commands import appliance, data, feedback, generation, jobs, submit
from tunevault.client.commands.common import Handler, UsageError, connection_options, rpc_error_hint, say
from tunevault.client.commands.generation import recent_exchanges

__all__ = ["build_parser", "main", "recent_exchanges"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunevault", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        connection_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    server_commands.register(commands)  # serve, audit
    appliance.add_parsers(add, commands)  # models, admin tokens
    data.add_parsers(add)
    submit.add_parsers(add)
    jobs.add_parsers(add)
    generation.add_parsers(add)
    feedback.add_parsers(commands)  # feedback add, list, export
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        say(f"error: {error}")
        return 2
    except grpc.RpcError as error:
        say(f"error: {error.code().name}: {error.details()}")
        if hint := rpc_error_hint(error, args):
            say(hint)
        return 2
    except (OSError, ValueError) as error:
        say(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
