"""`tunevault submit`: upload the training (and validation) file, then create the job."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from tunevault.client.commands.common import DATA_FORMATS, AddCommand, connect, say, state_name
from tunevault.client.watch import watch_job


def parse_sets(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def parse_time(value: str | None) -> float | None:
    """An ISO 8601 time ("2026-11-23T02:00", local time unless it names a zone) as Unix seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as error:
        raise SystemExit(f"--not-before: {error}") from error


def cmd_submit(args: argparse.Namespace) -> int:
    hyperparameters = parse_sets(args.set)
    with connect(args) as client:
        train = client.upload_dataset(args.file, data_format=args.format)
        say(f"uploaded {args.file}: {train.row_count} rows ({train.id})")
        validation_id = ""
        if args.validation_file:
            validation = client.upload_dataset(args.validation_file, data_format=args.format)
            validation_id = validation.id
            say(f"uploaded {args.validation_file}: {validation.row_count} rows ({validation.id})")
        job = client.create_job(train.id, args.model, hyperparameters, validation_dataset_id=validation_id,
                                idempotency_key=args.idempotency_key, display_name=args.name or "",
                                priority=args.priority, not_before=parse_time(args.not_before),
                                max_attempts=args.max_attempts, pii=args.pii)
        print(job.id, flush=True)
        say(f"job {job.id} is {state_name(job.state)}")
        return watch_job(client, job.id) if args.wait else 0


def add_parsers(add: AddCommand) -> None:
    submit = add("submit", cmd_submit, "upload a dataset and create a job; prints the job id")
    submit.add_argument("file", type=Path)
    submit.add_argument("--model", required=True, help="base model, as `tunevault models` lists it")
    submit.add_argument("--validation-file", type=Path)
    submit.add_argument("--format", choices=DATA_FORMATS, help="the files' row format (default: detected)")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter")
    submit.add_argument("--name", help="a label for people")
    submit.add_argument("--idempotency-key", help="retrying with the same key never makes a second job")
    submit.add_argument("--wait", action="store_true", help="watch the job until it ends")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (-1000..1000)")
    submit.add_argument("--not-before", help="ISO time before which it does not start, e.g. 2026-11-23T02:00")
    submit.add_argument("--max-attempts", type=int, default=0, help="worker starts before it fails (default 3)")
    submit.add_argument("--pii", choices=["off", "redact", "reject"], default="",
                        help="scrub personal identifiers before training: redact them, or reject the data")
