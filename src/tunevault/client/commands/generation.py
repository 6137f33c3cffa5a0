"""Client commands that try a model: `generate` (one prompt) and `chat` (a conversation kept in the client)."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from tunevault.client.client import Client
from tunevault.client.commands.common import AddCommand, connect, say
from tunevault.v1 import tunevault_pb2 as pb

CHAT_HELP = "/reset forgets the conversation, /exit (or Ctrl-D) ends it"
# Without these the session cannot work at all, so chat stops; any other failed turn is
# reported and the conversation goes on without it.
_CHAT_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


def _job_or_base(args: argparse.Namespace) -> None:
    if bool(args.base) == bool(args.job):
        raise SystemExit("give either JOB or --base MODEL")


def cmd_generate(args: argparse.Namespace) -> int:
    _job_or_base(args)
    with connect(args) as client:
        # Streamed: on a CPU box a long answer takes a while, and the first words come at once.
        for piece in client.generate_stream(args.prompt, job_id=args.job or "", base_model=args.base or "",
                                            max_tokens=args.max_tokens, temperature=args.temperature, stop=args.stop,
                                            system=args.system or ""):
            print(piece.delta, end="", flush=True)
    print()
    return 0


def recent_exchanges(history: list[tuple[str, str]], message: str, budget_chars: int) -> list[tuple[str, str]]:
    """The newest earlier exchanges that fit in budget_chars together with the new message.

    They travel as GenerateRequest.history, which the server renders with the model's chat
    template; the oldest are left out first so a long chat stays inside the model's context.
    """
    kept: list[tuple[str, str]] = []
    used = len(message)
    for user, assistant in reversed(history):
        used += len(user) + len(assistant)
        if used > budget_chars:
            break
        kept.insert(0, (user, assistant))
    return kept


def _read_line(interactive: bool) -> str | None:
    if interactive:
        print("you> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def _chat_turn(client: Client, args: argparse.Namespace, message: str,
               earlier: list[tuple[str, str]]) -> pb.GenerateResponse | None:
    try:
        return client.generate(message, job_id=args.job or "", base_model=args.base or "", max_tokens=args.max_tokens,
                               temperature=args.temperature, stop=args.stop, system=args.system or "", history=earlier)
    except grpc.RpcError as error:
        if error.code() in _CHAT_FATAL:
            raise
        say(f"error: {error.code().name}: {error.details()} (this turn is not kept; try again)")
        return None


def cmd_chat(args: argparse.Namespace) -> int:
    """A conversation kept here, in the client; every turn sends it along with the new message."""
    _job_or_base(args)
    interactive = sys.stdin.isatty()
    if interactive:
        say(f"chatting with {args.job or args.base}: {CHAT_HELP}")
    try:
        with connect(args) as client:
            return _chat_loop(client, args, interactive)
    except KeyboardInterrupt:
        say("")  # end the "you> " line; Ctrl-C at a terminal is a way out, not a crash
        return 130


def _chat_loop(client: Client, args: argparse.Namespace, interactive: bool) -> int:
    history: list[tuple[str, str]] = []
    failed = False
    while (line := _read_line(interactive)) is not None:
        message = line.strip()
        if message == "/exit":
            break
        if message == "/reset":
            history.clear()
            say("conversation forgotten")
        elif message:
            failed |= not _answer(client, args, history, message)
    return 1 if failed else 0


def _answer(client: Client, args: argparse.Namespace, history: list[tuple[str, str]], message: str) -> bool:
    """One turn: send, print, remember. False when it failed (and is not remembered)."""
    earlier = recent_exchanges(history, message, args.history_chars)
    carried = len(earlier)
    response = _chat_turn(client, args, message, earlier)
    if response is None:
        return False
    history.append((message, response.text))
    if args.json:
        print(json.dumps({"text": response.text, "completion_tokens": response.completion_tokens,
                          "history_turns": carried}), flush=True)
    else:
        print(response.text, flush=True)
    return True


def add_parsers(add: AddCommand) -> None:
    generate = add("generate", cmd_generate, "complete a prompt with a job's adapter (or --base MODEL)")
    generate.add_argument("job", nargs="?")
    generate.add_argument("prompt")
    generate.add_argument("--base", help="use this base model without an adapter")
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily")
    generate.add_argument("--stop", action="append", default=[])
    generate.add_argument("--system", help="a system message before the prompt")

    chat = add("chat", cmd_chat, f"talk with a job's adapter (or --base MODEL), one line a turn; {CHAT_HELP}")
    chat.add_argument("job", nargs="?")
    chat.add_argument("--base", help="use this base model without an adapter")
    chat.add_argument("--max-tokens", type=int, default=128, help="per answer")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily")
    chat.add_argument("--stop", action="append", default=[])
    chat.add_argument("--system", help="a system message before every turn")
    chat.add_argument("--history-chars", type=int, default=6000,
                      help="earlier turns sent along, newest first, up to this many characters (keeps the prompt "
                           "inside the model's context)")
