"""The `tunevault` command: serve the appliance, or talk to one (stdout for data, stderr for talk)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from tunevault.client.client import DEFAULT_ADDRESS, Client
from tunevault.client.watch import watch_job
from tunevault.v1 import tunevault_pb2 as pb

DATA_FORMATS = ("chat", "instruction", "completion", "text")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _print_json(message: Any) -> None:
    data = MessageToDict(message, preserving_proto_field_name=True) if hasattr(message, "DESCRIPTOR") else message
    print(json.dumps(data, indent=2, sort_keys=True))


def _state_name(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def _client(args: argparse.Namespace) -> Client:
    return Client(args.address, args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                  tls_server_name=args.tls_server_name)


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def _parse_time(value: str | None) -> float | None:
    """An ISO 8601 time ("2026-11-23T02:00", local time unless it names a zone) as Unix seconds."""
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as error:
        raise SystemExit(f"--not-before: {error}") from error


# Commands -------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from tunevault.server.app import run
        from tunevault.server.config import ServerConfig, default_data_dir, parse_bytes
    except ImportError as error:
        raise SystemExit(f"`tunevault serve` needs the server extra: pip install 'tunevault[server]' ({error})")
    config = ServerConfig(
        data_dir=args.data_dir or default_data_dir(), models_dir=args.models_dir, listen=args.listen, metrics_listen=args.metrics_listen,
        max_concurrent_jobs=args.max_concurrent_jobs, shutdown_grace_seconds=args.shutdown_grace,
        tls_cert=args.tls_cert_file, tls_key=args.tls_key_file, tls_client_ca=args.tls_client_ca,
        lease_seconds=args.lease_seconds, retry_backoff_seconds=args.retry_backoff, retention_days=args.retention_days,
        retry_backoff_max_seconds=args.retry_backoff_max,
        admin_token_file=args.admin_token_file, master_key_file=args.master_key_file,
        rate_limit_per_second=args.rate_limit,
        rate_limit_burst=args.rate_limit_burst,
        max_pending_jobs_per_tenant=args.max_pending_jobs, max_tenant_storage_bytes=args.max_tenant_storage,
        max_upload_bytes=args.max_upload_bytes, max_dataset_rows=args.max_dataset_rows,
        device_memory_bytes=parse_bytes(args.device_memory),
    )
    run(config)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "import":
        from tunevault.server.training.model_import import main as import_main
        argv = ["--models-dir", str(args.models_dir)] + (["--name", args.name] if args.name else [])
        return import_main(argv + ([str(args.path)] if args.path else ["--default"]))
    with _client(args) as client:
        models = client.list_models()
    if args.json:
        _print_json({"models": [MessageToDict(m, preserving_proto_field_name=True) for m in models]})
    for model in [] if args.json else models:
        print(f"{model.name}\t{model.architecture}\t{model.size_bytes / 1e6:.0f} MB")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        dataset = client.upload_dataset(args.file, data_format=args.format)
    if args.json:
        _print_json(dataset)
    else:
        print(dataset.id)
        _say(f"uploaded {args.file} as {dataset.id}: {dataset.row_count} rows, sha256 {dataset.sha256}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    hyperparameters = _parse_sets(args.set)
    with _client(args) as client:
        train = client.upload_dataset(args.file, data_format=args.format)
        _say(f"uploaded {args.file}: {train.row_count} rows ({train.id})")
        validation_id = ""
        if args.validation_file:
            validation = client.upload_dataset(args.validation_file, data_format=args.format)
            validation_id = validation.id
            _say(f"uploaded {args.validation_file}: {validation.row_count} rows ({validation.id})")
        job = client.create_job(train.id, args.model, hyperparameters, validation_dataset_id=validation_id,
                                idempotency_key=args.idempotency_key, display_name=args.name or "",
                                priority=args.priority, not_before=_parse_time(args.not_before),
                                max_attempts=args.max_attempts, pii=args.pii)
        print(job.id, flush=True)
        _say(f"job {job.id} is {_state_name(job.state)}")
        return watch_job(client, job.id) if args.wait else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    with _client(args) as client:
        response = client.list_jobs(states=states, page_size=args.limit, page_token=args.page_token)
    if args.json:
        _print_json(response)
        return 0
    for job in response.jobs:
        progress = f"{job.step}/{job.total_steps}" if job.total_steps else "-"
        print(f"{job.id}\t{_state_name(job.state)}\t{job.base_model}\t{progress}\t{job.display_name}")
    if response.next_page_token:
        _say(f"more: --page-token {response.next_page_token}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.job:
            job = client.get_job(args.job)
            if args.json:
                _print_json(job)
            else:
                _print_job(job)
            return 0
        status = client.get_status()
        health = client.health()
    if args.json:
        data = MessageToDict(status, preserving_proto_field_name=True)
        data["health"] = health
        _print_json(data)
        return 0
    print(f"tunevault {status.version} at {args.address}: {health}, up {status.uptime_seconds / 60:.0f} min")
    counts = {k: v for k, v in status.jobs_by_state.items() if v}
    print("jobs: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "none"))
    for job in status.running_jobs:
        share = f" ({job.step / job.total_steps:.0%})" if job.total_steps else ""
        print(f"running {job.id} [{_state_name(job.state).lower()}]: step {job.step}/{job.total_steps}{share}, "
              f"{job.trained_tokens} tokens, model {job.base_model}")
    print(f"disk: {status.data_bytes / 1e9:.2f} GB used by the appliance, {status.disk_free_bytes / 1e9:.1f} GB free")
    return 0


def _print_job(job: pb.Job) -> None:
    print(f"{job.id}  {_state_name(job.state)}  model {job.base_model}  step {job.step}/{job.total_steps}")
    if job.HasField("error"):
        print(f"error {job.error.code}: {job.error.message}")
    for key, value in sorted(job.result.metrics.items()):
        print(f"  {key} = {value:.4g}")


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return watch_job(client, args.job)


def cmd_events(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for event in client.stream_events(args.job, after_sequence=args.after, follow=args.follow):
            if args.json:
                print(json.dumps(MessageToDict(event, preserving_proto_field_name=True), sort_keys=True), flush=True)
            else:
                figures = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
                print(f"{event.sequence}\t{event.type}\t{event.message}\t{figures}", flush=True)
    return 0


def _job_action(method: str) -> Any:
    """A command that calls one Client method on a job and says the state it left it in."""
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            job = getattr(client, method)(args.job)
        _say(f"job {job.id} is {_state_name(job.state)}")
        return 0
    return run


cmd_cancel, cmd_pause, cmd_resume = _job_action("cancel_job"), _job_action("pause_job"), _job_action("resume_job")


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.delete_job(args.job)
    _say(f"job {response.job.id}: deleted {response.freed_bytes} bytes of artifacts and checkpoints"
         + (f"; destroyed data key {response.destroyed_key_id}" if response.destroyed_key_id else ""))
    return 0


def cmd_delete_dataset(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.delete_dataset(args.dataset)
    _say(f"dataset {response.dataset.id}: deleted {response.freed_bytes} bytes"
         + (f"; destroyed data key {response.destroyed_key_id}" if response.destroyed_key_id else ""))
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with _client(args) as client:
        checkpoints = client.list_checkpoints(args.job)
    if args.json:
        _print_json({"checkpoints": [MessageToDict(c, preserving_proto_field_name=True) for c in checkpoints]})
        return 0
    for checkpoint in checkpoints:
        figures = " ".join(f"{k}={v:.4g}" for k, v in sorted(checkpoint.metrics.items()))
        print(f"step {checkpoint.step}\t{checkpoint.size_bytes / 1e6:.1f} MB\t{figures}")
    return 0


def cmd_admin_tokens(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.tokens_command == "create":
            response = client.create_token(args.tenant, args.role, args.name or "")
            if args.json:
                _print_json(response)
            else:
                print(response.secret)
                _say(f"token {response.token.id} for tenant {args.tenant} ({args.role}); the secret is shown once")
        elif args.tokens_command == "revoke":
            token = client.revoke_token(args.token_id)
            _say(f"token {token.id} revoked")
        else:
            tokens = client.list_tokens(args.tenant or "")
            if args.json:
                _print_json({"tokens": [MessageToDict(t, preserving_proto_field_name=True) for t in tokens]})
            for token in [] if args.json else tokens:
                role = pb.Role.Name(token.role).removeprefix("ROLE_").lower()
                revoked = " revoked" if token.HasField("revoked_at") else ""
                print(f"{token.id}\t{token.tenant}\t{role}\t{token.name}{revoked}")
    return 0


def _audit_rows(data_dir: Path) -> tuple[list[dict], dict | None]:
    import sqlite3

    database = data_dir / "tunevault.db"
    if not database.is_file():
        raise SystemExit(f"no database at {database}")
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY seq")]
        head = db.execute("SELECT seq, entry_hash FROM audit_head WHERE id = 1").fetchone()
    return rows, dict(head) if head else None


def cmd_audit(args: argparse.Namespace) -> int:
    """Works on the database file itself (or a copy of it), not through the server."""
    from tunevault.server.config import default_data_dir
    from tunevault.server.store.audit import verify

    rows, head = _audit_rows(args.data_dir or default_data_dir())
    verdict = verify(rows, head)
    if args.audit_command == "verify":
        if verdict.ok:
            print(f"audit log intact: {verdict.entries} entries, head {head['entry_hash'] if head else '-'}")
            return 0
        print(f"audit log BROKEN: {verdict.problem}")
        return 1
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for row in rows:
            out.write(json.dumps({**row, "details": json.loads(row["details"])}, sort_keys=True) + "\n")
    finally:
        if args.output:
            out.close()
    _say(f"exported {len(rows)} entries; chain {'intact' if verdict.ok else 'BROKEN: ' + verdict.problem}")
    return 0 if verdict.ok else 1


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.download_artifact(args.job, args.output)
    print(path)
    return 0


REPORT_FILES = ("metrics.json", "report.md", "loss_curve.png")


def cmd_privacy_report(args: argparse.Namespace) -> int:
    from tunevault.client import privacy_report

    with _client(args) as client:
        job = client.get_job(args.job)
        datasets = [("train", client.get_dataset(job.dataset_id))]
        if job.validation_dataset_id:
            datasets.append(("validation", client.get_dataset(job.validation_dataset_id)))
        events = list(client.stream_events(job.id, follow=False))
        report = privacy_report.build(job, datasets, events, client.get_status().retention_days)
    if args.json:
        _print_json(report)
    else:
        print(privacy_report.render(report), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The report travels inside the adapter archive: fetch it into a scratch folder, keep only what was asked."""
    with tempfile.TemporaryDirectory(prefix="tunevault-report-") as scratch:
        with _client(args) as client:
            archive = client.download_artifact(args.job, Path(scratch))
        found = _extract_report(archive, Path(scratch) / "report")
        if "metrics.json" not in found:
            raise SystemExit(f"job {args.job}'s archive has no metrics.json")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for path in found.values():
                shutil.copyfile(path, args.out / path.name)
            _say(f"saved {', '.join(sorted(found))} in {args.out}")
        if args.json:
            _print_json(json.loads(found["metrics.json"].read_text()))
        elif "report.md" in found:
            print(found["report.md"].read_text(), end="")
        else:
            raise SystemExit(f"job {args.job} has no report.md (it finished before reports existed); "
                             "--json prints its metrics")
    return 0


def _extract_report(archive: Path, target: Path) -> dict[str, Path]:
    """The report files at the archive's top folder, read member by member so no archive path is trusted."""
    target.mkdir()
    found = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = Path(member.name)
                if member.isfile() and len(name.parts) == 2 and name.name in REPORT_FILES:
                    source = tar.extractfile(member)
                    if source is not None:
                        (target / name.name).write_bytes(source.read())
                        found[name.name] = target / name.name
    except tarfile.TarError as error:
        raise SystemExit(f"the archive of this job is unreadable: {error}") from error
    return found


def cmd_generate(args: argparse.Namespace) -> int:
    if bool(args.base) == bool(args.job):
        raise SystemExit("give either JOB or --base MODEL")
    with _client(args) as client:
        response = client.generate(args.prompt, job_id=args.job or "", base_model=args.base or "",
                                   max_tokens=args.max_tokens, temperature=args.temperature, stop=args.stop,
                                   system=args.system or "")
    print(response.text)
    return 0


# Chat ---------------------------------------------------------------------------------

CHAT_HELP = "/reset forgets the conversation, /exit (or Ctrl-D) ends it"
# Without these the session cannot work at all, so chat stops; any other failed turn is
# reported and the conversation goes on without it.
_CHAT_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


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
        _say(f"error: {error.code().name}: {error.details()} (this turn is not kept; try again)")
        return None


def cmd_chat(args: argparse.Namespace) -> int:
    """A conversation kept here, in the client; every turn sends it along with the new message."""
    if bool(args.base) == bool(args.job):
        raise SystemExit("give either JOB or --base MODEL")
    interactive = sys.stdin.isatty()
    if interactive:
        _say(f"chatting with {args.job or args.base}: {CHAT_HELP}")
    try:
        with _client(args) as client:
            return _chat_loop(client, args, interactive)
    except KeyboardInterrupt:
        _say("")  # end the "you> " line; Ctrl-C at a terminal is a way out, not a crash
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
            _say("conversation forgotten")
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


# Parser -------------------------------------------------------------------------------

def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("TUNEVAULT_ADDRESS", DEFAULT_ADDRESS),
                        help="HOST:PORT of the appliance (env TUNEVAULT_ADDRESS)")
    parser.add_argument("--token", default=os.environ.get("TUNEVAULT_TOKEN"), help="API token (env TUNEVAULT_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, default=os.environ.get("TUNEVAULT_TLS_CA"),
                        help="CA bundle that signed the server certificate: enables TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client private key, for mutual TLS")
    parser.add_argument("--tls-server-name", help="expected server name when it differs from the address")
    parser.add_argument("--json", action="store_true", help="print structured data as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunevault", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the appliance")
    serve.add_argument("--data-dir", type=Path, default=None, help="database, datasets and artifacts")
    serve.add_argument("--models-dir", type=Path, default=os.environ.get("TUNEVAULT_MODELS_DIR"),
                       help="model store (default DATA_DIR/models; env TUNEVAULT_MODELS_DIR)")
    serve.add_argument("--listen", default="127.0.0.1:50051")
    serve.add_argument("--metrics-listen", default="127.0.0.1:9464")
    serve.add_argument("--max-concurrent-jobs", type=int, default=1, help="one per GPU")
    serve.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds SIGTERM waits to drain")
    serve.add_argument("--lease-seconds", type=float, default=120.0,
                       help="a worker silent this long is presumed dead and its job recovered")
    serve.add_argument("--retry-backoff", type=float, default=10.0,
                       help="seconds before the first retry of a crashed worker (doubles per attempt)")
    serve.add_argument("--retry-backoff-max", type=float, default=600.0, help="longest wait between retries")
    serve.add_argument("--retention-days", type=float, default=0.0,
                       help="delete artifacts of jobs finished this many days ago (0 keeps them)")
    serve.add_argument("--master-key-file", type=Path, default=None,
                       help="master key of encryption at rest, base64 of 32 bytes (env TUNEVAULT_MASTER_KEY_FILE or "
                            "TUNEVAULT_MASTER_KEY; else generated once beside the data directory)")
    serve.add_argument("--admin-token-file", type=Path, default=os.environ.get("TUNEVAULT_ADMIN_TOKEN_FILE"),
                       help="first admin token, from a file (env TUNEVAULT_ADMIN_TOKEN_FILE); else generated and printed once")
    serve.add_argument("--rate-limit", type=float, default=50.0, help="requests per second per token")
    serve.add_argument("--rate-limit-burst", type=float, default=200.0, help="requests a token may make at once")
    serve.add_argument("--max-pending-jobs", type=int, default=100, help="unfinished jobs per tenant")
    serve.add_argument("--max-tenant-storage", type=int, default=50 * 1024**3, help="dataset bytes per tenant")
    serve.add_argument("--max-upload-bytes", type=int, default=512 * 1024**2)
    serve.add_argument("--max-dataset-rows", type=int, default=1_000_000)
    serve.add_argument("--device-memory", default=os.environ.get("TUNEVAULT_DEVICE_MEMORY", "auto"),
                       help="memory one job may use, e.g. 24GiB (auto: cgroup limit or RAM on CPU; unchecked on GPU)")
    serve.add_argument("--tls-cert", dest="tls_cert_file", type=Path)
    serve.add_argument("--tls-key", dest="tls_key_file", type=Path)
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    serve.set_defaults(handler=cmd_serve)

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        _connection_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    models = add("models", cmd_models, "list the model store, or import a model into it")
    models.add_argument("models_command", nargs="?", choices=["list", "import"], default="list")
    models.add_argument("path", nargs="?", type=Path, help="import: a local HF directory or .gguf file")
    models.add_argument("--name", help="import: the model's name in the store")
    models.add_argument("--models-dir", type=Path, default=os.environ.get("TUNEVAULT_MODELS_DIR"),
                        help="import: the model store directory")

    upload = add("upload", cmd_upload, "upload a dataset; prints its id")
    upload.add_argument("file", type=Path, help="JSONL, CSV (with a header) or Parquet")
    upload.add_argument("--format", choices=DATA_FORMATS, help="the row format (default: detected)")

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

    jobs = add("jobs", cmd_jobs, "list jobs, newest first")
    jobs.add_argument("--state", action="append", default=[], help="only jobs in this state (repeatable)")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--page-token", default="")

    status = add("status", cmd_status, "one job in detail, or the appliance at a glance")
    status.add_argument("job", nargs="?")

    watch = add("watch", cmd_watch, "follow a job with a progress bar; exit 0 only if it succeeds")
    watch.add_argument("job")

    events = add("events", cmd_events, "print a job's events")
    events.add_argument("job")
    events.add_argument("--after", type=int, default=0, help="only events after this sequence number")
    events.add_argument("--follow", action="store_true", help="keep printing until the job ends")

    cancel = add("cancel", cmd_cancel, "cancel a queued or running job")
    cancel.add_argument("job")

    for name, handler, text in (("pause", cmd_pause, "stop a running job at a checkpoint"),
                                ("resume", cmd_resume, "queue a paused job again"),
                                ("delete", cmd_delete, "delete a finished job's artifacts and checkpoints"),
                                ("checkpoints", cmd_checkpoints, "list a job's checkpoints")):
        add(name, handler, text).add_argument("job")
    add("delete-dataset", cmd_delete_dataset,
        "delete a dataset: its file, and its data key (crypto-shredding)").add_argument("dataset")

    admin = commands.add_parser("admin", help="administration (needs an admin token)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    tokens = admin_commands.add_parser("tokens", help="create, list and revoke API tokens")
    _connection_options(tokens)
    tokens.set_defaults(handler=cmd_admin_tokens)
    tokens.add_argument("tokens_command", choices=["create", "list", "revoke"])
    tokens.add_argument("token_id", nargs="?", help="revoke: the token's id")
    tokens.add_argument("--tenant", help="create: the tenant (list: only this tenant)")
    tokens.add_argument("--role", choices=["admin", "submitter", "viewer"], default="submitter")
    tokens.add_argument("--name", help="create: a label for people")

    audit = commands.add_parser("audit", help="verify or export the hash-chained audit log (on the appliance)")
    audit.add_argument("audit_command", choices=["verify", "export"])
    audit.add_argument("--data-dir", type=Path, help="the appliance's data directory (or a copy of it)")
    audit.add_argument("-o", "--output", type=Path, help="export: a JSONL file (default stdout)")
    audit.set_defaults(handler=cmd_audit)

    download = add("download", cmd_download, "download a finished job's adapter archive")
    download.add_argument("job")
    download.add_argument("-o", "--output", type=Path, default=Path("."), help="file or folder")

    report = add("report", cmd_report, "print a finished job's report (--json: its metrics.json)")
    report.add_argument("job")
    report.add_argument("--out", type=Path, help="also save metrics.json, report.md and loss_curve.png in this folder")

    privacy = add("privacy-report", cmd_privacy_report,
                  "a job's privacy report: data hashes, PII, DP epsilon, memorization audit, keys, retention")
    privacy.add_argument("job")  # --json (every command has it) prints it as JSON

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except grpc.RpcError as error:
        _say(f"error: {error.code().name}: {error.details()}")
        return 2
    except (OSError, ValueError) as error:
        _say(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
