"""`tunevault submit`: check everything that can be checked, upload, create the job, and leave no orphan data.

Each upload counts against the tenant's storage quota, so a typo must cost nothing: the files,
every --set value and the base model (ListModels) are checked before the first byte is sent,
and the datasets this command uploaded are deleted again when no job ends up using them.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import grpc

from tunevault.client.client import Client, HyperparameterValueError, hyperparameters_message
from tunevault.client.commands.common import DATA_FORMATS, AddCommand, UsageError, check_file, connect, say, state_name
from tunevault.client.watch import watch_job
from tunevault.v1 import tunevault_pb2 as pb


def parse_sets(pairs: list[str]) -> pb.Hyperparameters:
    """Every `--set KEY=VALUE` as the typed message; a bad one is named as the user wrote it."""
    values: dict[str, str] = {}
    written: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise UsageError(f"--set {pair}: expected KEY=VALUE")
        values[key], written[key] = value, pair
    try:
        return hyperparameters_message(values)
    except HyperparameterValueError as error:
        raise UsageError(f"--set {written[error.name]}: {error.reason}") from None


def parse_time(value: str | None) -> float | None:
    """An ISO 8601 time ("2026-11-23T02:00", local time unless it names a zone) as Unix seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as error:
        raise UsageError(f"--not-before {value}: {error}") from None


def check_model(client: Client, name: str) -> None:
    """The base model must be in the appliance's model store; asked before anything is uploaded."""
    names = [model.name for model in client.list_models()]
    if name not in names:
        known = ", ".join(names) or "none"
        raise UsageError(f"--base-model {name}: the appliance has no such model (it has: {known}); nothing was "
                         "uploaded. An operator adds one on the server with `tunevault models import`")


def cmd_submit(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.dataset is None):
        raise UsageError("give a FILE to upload, or --dataset DATASET_ID to train on a stored dataset (not both)")
    files = ([check_file(args.file)] if args.file else []) + \
        ([check_file(args.validation_file)] if args.validation_file else [])
    hyperparameters = parse_sets(args.set)
    not_before = parse_time(args.not_before)
    with connect(args) as client:
        check_model(client, args.base_model)
        uploaded: list[pb.Dataset] = []
        try:
            for path in files:
                uploaded.append(client.upload_dataset(path, data_format=args.format))
                say(f"uploaded {path}: {uploaded[-1].row_count} rows ({uploaded[-1].id})")
            if args.dataset:  # stored already, e.g. by `tunevault feedback export`
                train_id, validation = args.dataset, uploaded[0] if uploaded else None
            else:
                train_id, validation = uploaded[0].id, uploaded[1] if len(uploaded) > 1 else None
            job = client.create_job(train_id, args.base_model, hyperparameters,
                                    validation_dataset_id=validation.id if validation else "",
                                    idempotency_key=args.idempotency_key, display_name=args.name or "",
                                    priority=args.priority, not_before=not_before,
                                    max_attempts=args.max_attempts, pii=args.pii, gpus=args.gpus,
                                    method=args.method)
        except BaseException:  # Ctrl-C during an upload too: what reached the server is removed
            _delete_uploads(client, uploaded, "submit failed")
            raise
        if job.dataset_id != train_id:
            # The idempotency key named a job made earlier, with the data uploaded back then.
            _delete_uploads(client, uploaded, f"job {job.id} already existed with key {args.idempotency_key}")
        print(job.id, flush=True)
        say(f"job {job.id} is {state_name(job.state)}")
        return watch_job(client, job.id) if args.wait else 0


def _delete_uploads(client: Client, datasets: list[pb.Dataset], why: str) -> None:
    """Deletes what this command uploaded, so it neither lingers nor counts against the quota."""
    for dataset in datasets:
        try:
            client.delete_dataset(dataset.id)
            say(f"{why}: deleted the dataset just uploaded ({dataset.id})")
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # A job uses it after all (say, CreateJob's answer was lost on the way back): keep it.
                say(f"kept the dataset just uploaded ({dataset.id}): {error.details()}")
            else:
                say(f"{why}, and the dataset just uploaded ({dataset.id}) could not be deleted: {error.code().name}: "
                    f"{error.details()}; remove it with `tunevault delete-dataset {dataset.id}`")


def add_parsers(add: AddCommand) -> None:
    submit = add("submit", cmd_submit, "upload a dataset and create a job; prints the job id")
    submit.add_argument("file", type=Path, nargs="?", help="the training data to upload (or --dataset)")
    submit.add_argument("--dataset", help="train on this stored dataset instead of uploading a FILE "
                                          "(e.g. what `tunevault feedback export` made)")
    # --base-model, like the API's field; --model is kept so older scripts still work.
    submit.add_argument("--base-model", "--model", dest="base_model", required=True,
                        help="base model, as `tunevault models` lists it")
    submit.add_argument("--validation-file", type=Path)
    submit.add_argument("--format", choices=DATA_FORMATS, help="the files' row format (default: detected)")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter: a number, true/false, or a comma list (repeatable)")
    submit.add_argument("--name", help="a label for people")
    submit.add_argument("--idempotency-key", help="retrying with the same key never makes a second job")
    submit.add_argument("--wait", action="store_true", help="watch the job until it ends")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (-1000..1000)")
    submit.add_argument("--not-before", help="ISO time before which it does not start, e.g. 2026-11-23T02:00")
    submit.add_argument("--max-attempts", type=int, default=0, help="worker starts before it fails (default 3)")
    submit.add_argument("--gpus", type=int, default=None,
                        help="GPUs the job needs at once; 0 trains on the CPU (default: 1 on a GPU server)")
    submit.add_argument("--method", choices=["sft", "dpo", "orpo"], default="",
                        help="sft (default) learns answers; dpo and orpo learn preferences from "
                             "prompt/chosen/rejected rows (--set preference_beta=0.1 / orpo_lambda=0.1)")
    submit.add_argument("--pii", choices=["off", "redact", "reject"], default="",
                        help="scrub personal identifiers before training: redact them, or reject the data")
