"""Client commands of the feedback loop: rate or rewrite a job's answers, list them, export them as DPO pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunevault.client.commands.common import (
    UsageError,
    check_file,
    connect,
    connection_options,
    messages_json,
    print_json,
    say,
)

PREVIEW_CHARS = 60


def _preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PREVIEW_CHARS else line[:PREVIEW_CHARS - 3] + "..."


def _rating(args: argparse.Namespace) -> int:
    return 1 if args.good else -1 if args.bad else 0


def _rewrite(args: argparse.Namespace) -> str:
    if args.rewrite_file is not None:
        # An editor's final newline is not part of the answer.
        return check_file(args.rewrite_file).read_text(encoding="utf-8").rstrip("\n")
    return args.rewrite or ""


def cmd_add(args: argparse.Namespace) -> int:
    if args.generate == (args.completion is not None):
        raise UsageError("give the answer with --completion TEXT, or --generate to ask the job's adapter for it")
    rewrite = _rewrite(args)
    if not _rating(args) and not rewrite:
        raise UsageError("say what you think of the answer: --good, --bad, and/or --rewrite TEXT (--rewrite-file F)")
    with connect(args) as client:
        completion = args.completion
        if args.generate:
            completion = client.generate(args.prompt, job_id=args.job, max_tokens=args.max_tokens,
                                         system=args.system or "").text
            say(f"the adapter's answer:\n{completion}")
            if not completion.strip():
                raise SystemExit("the adapter's answer is empty: nothing to rate, nothing recorded "
                                 "(give a --completion, or try a larger --max-tokens)")
        feedback = client.record_feedback(args.job, args.prompt, completion, rating=_rating(args),
                                          preferred_completion=rewrite, system=args.system or "")
    if args.json:
        print_json(feedback)
    else:
        print(feedback.id)
        kind = {1: "rated good", -1: "rated bad", 0: "not rated"}[feedback.rating]
        say(f"recorded feedback {feedback.id} on job {feedback.job_id}: {kind}"
            f"{', with a rewrite' if feedback.has_rewrite else ''}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.list_feedback(args.job, page_size=args.limit, page_token=args.page_token)
    if args.json:
        messages_json("feedback", list(response.feedback))
    for entry in [] if args.json else response.feedback:
        rating = {1: "good", -1: "bad", 0: "-"}[entry.rating]
        rewrite = "rewrite" if entry.has_rewrite else "-"
        created = f"{entry.created_at.ToDatetime():%Y-%m-%d %H:%M}"
        print(f"{entry.id}\t{created}\t{rating}\t{rewrite}\t{_preview(entry.prompt)}")
    if response.next_page_token:
        say(f"more: --page-token {response.next_page_token}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.export_feedback(args.job, args.name or "")
        job = client.get_job(args.job)
    if args.json:
        print_json(response)
        return 0
    print(response.dataset.id)
    say(f"exported {response.pair_count} preference pair(s) ({response.rewrite_pairs} from rewrites, "
        f"{response.rating_pairs} from good/bad ratings) of {response.feedback_count} feedback entries "
        f"as dataset {response.dataset.id} ({response.dataset.name})")
    say(f"train on it: tunevault submit --dataset {response.dataset.id} --base-model {job.base_model} "
        f"--method dpo --pii redact")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("feedback", help="rate or rewrite a job's answers, and make a DPO dataset of them")
    actions = group.add_subparsers(dest="feedback_command", required=True)

    def action(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        connection_options(sub)
        sub.set_defaults(handler=handler)
        sub.add_argument("job", help="a SUCCEEDED job")
        return sub

    add = action("add", cmd_add, "record a rating and/or a better answer for one answer of the job's adapter")
    add.add_argument("--prompt", required=True, help="the message the answer replies to")
    add.add_argument("--completion", help="the adapter's answer (or --generate)")
    add.add_argument("--generate", action="store_true", help="ask the job's adapter for the answer, show it, record it")
    add.add_argument("--max-tokens", type=int, default=128, help="with --generate")
    add.add_argument("--system", help="the system message the answer was generated with")
    rating = add.add_mutually_exclusive_group()
    rating.add_argument("--good", action="store_true", help="the answer is good")
    rating.add_argument("--bad", action="store_true", help="the answer is bad")
    rewrite = add.add_mutually_exclusive_group()
    rewrite.add_argument("--rewrite", help="a better answer")
    rewrite.add_argument("--rewrite-file", type=Path, help="a file holding a better answer")

    listing = action("list", cmd_list, "the job's feedback, newest first")
    listing.add_argument("--limit", type=int, default=0, help="at most this many (default 50)")
    listing.add_argument("--page-token", default="")

    export = action("export", cmd_export,
                    "make a preference dataset (DPO pairs) of the job's feedback; prints its dataset id")
    export.add_argument("--name", help="the dataset's name (default feedback-JOB)")
