"""The one seam between the thin client and the appliance's own commands (serve, audit, models import).

The client never imports tunevault.server statically: `pip install tunevault` must work with
grpcio and protobuf alone. The `tunevault` command looks the server commands up by module name
(SERVER_COMMANDS) when it builds its parser. That module imports only the standard library at
load time, and must provide:

    register(commands)    adds its subcommands (serve, audit) to the top-level subparsers
    import_model(args)    runs `tunevault models import` (the client's `models` parser declares its flags)

Its handlers import the heavy server code lazily and, where the `[server]` dependencies are
missing, stop with NEEDS_SERVER. Where the module itself is missing, the client registers
stand-ins that say the same.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import NoReturn

SERVER_COMMANDS = "tunevault.server.admin.cli"
NEEDS_SERVER = "needs the server extra: pip install 'tunevault[server]'"
STAND_INS = {"serve": "run the appliance", "audit": "verify or export the hash-chained audit log (on the appliance)"}


def load() -> ModuleType | None:
    """The server commands' module, or None when this installation has none."""
    try:
        return importlib.import_module(SERVER_COMMANDS)
    except ModuleNotFoundError as error:
        # Only the seam's own package being absent means "not installed"; a missing module
        # inside it is a bug that must not hide behind the install hint.
        if error.name and SERVER_COMMANDS.startswith(error.name):
            return None
        raise


def register(commands: argparse._SubParsersAction) -> None:
    module = load()
    if module is not None:
        module.register(commands)
        return
    for name, help_text in STAND_INS.items():
        # Takes any arguments, so `tunevault serve --data-dir D` gets the install hint, not a usage error.
        stand_in = commands.add_parser(name, help=f"{help_text} ({NEEDS_SERVER})", add_help=False, prefix_chars="\0")
        stand_in.add_argument("ignored", nargs="*")
        stand_in.set_defaults(handler=lambda args, name=name: missing(f"tunevault {name}"))


def import_model(args: argparse.Namespace) -> int:
    module = load()
    if module is None:
        return missing("tunevault models import")
    return int(module.import_model(args))


def missing(command: str) -> NoReturn:
    raise SystemExit(f"error: `{command}` {NEEDS_SERVER}")
