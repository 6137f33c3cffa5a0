"""Client commands about the appliance itself: its model store (`models`) and its API tokens (`admin tokens`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tunevault.client import server_commands
from tunevault.client.commands.common import AddCommand, connect, connection_options, messages_json, print_json, say
from tunevault.v1 import tunevault_pb2 as pb


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "import":
        # Writes into the model store's folder on this machine: a server-side command, found through the seam.
        return server_commands.import_model(args)
    with connect(args) as client:
        models = client.list_models()
    if args.json:
        messages_json("models", models)
    for model in [] if args.json else models:
        print(f"{model.name}\t{model.architecture}\t{model.size_bytes / 1e6:.0f} MB")
    return 0


def cmd_admin_tokens(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.tokens_command == "create":
            response = client.create_token(args.tenant, args.role, args.name or "")
            if args.json:
                print_json(response)
            else:
                print(response.secret)
                say(f"token {response.token.id} for tenant {args.tenant} ({args.role}); the secret is shown once")
        elif args.tokens_command == "revoke":
            token = client.revoke_token(args.token_id)
            say(f"token {token.id} revoked")
        else:
            tokens = client.list_tokens(args.tenant or "")
            if args.json:
                messages_json("tokens", tokens)
            for token in [] if args.json else tokens:
                role = pb.Role.Name(token.role).removeprefix("ROLE_").lower()
                revoked = " revoked" if token.HasField("revoked_at") else ""
                print(f"{token.id}\t{token.tenant}\t{role}\t{token.name}{revoked}")
    return 0


def add_parsers(add: AddCommand, commands: argparse._SubParsersAction) -> None:
    models = add("models", cmd_models, "list the model store, or import a model into it (import: on the server)")
    models.add_argument("models_command", nargs="?", choices=["list", "import"], default="list")
    models.add_argument("path", nargs="?", type=Path,
                        help="import: a local HF directory or .gguf file (none: the default model)")
    models.add_argument("--name", help="import: the model's name in the store")
    models.add_argument("--models-dir", type=Path, default=os.environ.get("TUNEVAULT_MODELS_DIR"),
                        help="import: the model store directory (env TUNEVAULT_MODELS_DIR)")

    admin = commands.add_parser("admin", help="administration (needs an admin token)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    tokens = admin_commands.add_parser("tokens", help="create, list and revoke API tokens")
    connection_options(tokens)
    tokens.set_defaults(handler=cmd_admin_tokens)
    tokens.add_argument("tokens_command", choices=["create", "list", "revoke"])
    tokens.add_argument("token_id", nargs="?", help="revoke: the token's id")
    tokens.add_argument("--tenant", help="create: the tenant (list: only this tenant)")
    tokens.add_argument("--role", choices=["admin", "submitter", "viewer"], default="submitter")
    tokens.add_argument("--name", help="create: a label for people")
