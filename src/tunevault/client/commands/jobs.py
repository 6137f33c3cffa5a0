"""Client commands on jobs once they exist: list, status, watch, events, cancel/pause/resume, delete, checkpoints."""

from __future__ import annotations

import argparse
import json

from google.protobuf.json_format import MessageToDict

from tunevault.client.commands.common import (
    AddCommand, Handler, connect, messages_json, print_json, say, say_deleted, state_name,
)
from tunevault.client.watch import watch_job
from tunevault.v1 import tunevault_pb2 as pb


def cmd_jobs(args: argparse.Namespace) -> int:
    states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    with connect(args) as client:
        response = client.list_jobs(states=states, page_size=args.limit, page_token=args.page_token)
    if args.json:
        print_json(response)
        return 0
    for job in response.jobs:
        progress = f"{job.step}/{job.total_steps}" if job.total_steps else "-"
        print(f"{job.id}\t{state_name(job.state)}\t{job.base_model}\t{progress}\t{job.display_name}")
    if response.next_page_token:
        say(f"more: --page-token {response.next_page_token}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.job:
            job = client.get_job(args.job)
            if args.json:
                print_json(job)
            else:
                _print_job(job)
            return 0
        status = client.get_status()
        health = client.health()
    if args.json:
        data = MessageToDict(status, preserving_proto_field_name=True)
        data["health"] = health
        print_json(data)
        return 0
    print(f"tunevault {status.version} at {args.address}: {health}, up {status.uptime_seconds / 60:.0f} min")
    counts = {k: v for k, v in status.jobs_by_state.items() if v}
    print("jobs: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "none"))
    for job in status.running_jobs:
        share = f" ({job.step / job.total_steps:.0%})" if job.total_steps else ""
        on = f", GPU {','.join(map(str, job.devices))}" if job.devices else ""
        print(f"running {job.id} [{state_name(job.state).lower()}]: step {job.step}/{job.total_steps}{share}, "
              f"{job.trained_tokens} tokens, model {job.base_model}{on}")
    if status.gpus:
        print("gpus: " + ", ".join(f"{g.index} {(g.job_id or 'busy') if g.busy else 'free'}" for g in status.gpus))
    print(f"disk: {status.data_bytes / 1e9:.2f} GB used by the appliance, {status.disk_free_bytes / 1e9:.1f} GB free")
    return 0


def _print_job(job: pb.Job) -> None:
    print(f"{job.id}  {state_name(job.state)}  model {job.base_model}  step {job.step}/{job.total_steps}")
    if job.devices:
        print(f"gpus: {','.join(map(str, job.devices))}")
    if job.HasField("error"):
        print(f"error {job.error.code}: {job.error.message}")
    for key, value in sorted(job.result.metrics.items()):
        print(f"  {key} = {value:.4g}")


def cmd_watch(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return watch_job(client, args.job)


def cmd_events(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for event in client.stream_events(args.job, after_sequence=args.after, follow=args.follow):
            if args.json:
                print(json.dumps(MessageToDict(event, preserving_proto_field_name=True), sort_keys=True), flush=True)
            else:
                figures = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
                print(f"{event.sequence}\t{event.type}\t{event.message}\t{figures}", flush=True)
    return 0


def _job_action(method: str) -> Handler:
    """A command that calls one Client method on a job and says the state it left it in."""
    def run(args: argparse.Namespace) -> int:
        with connect(args) as client:
            job = getattr(client, method)(args.job)
        say(f"job {job.id} is {state_name(job.state)}")
        return 0
    return run


cmd_cancel, cmd_pause, cmd_resume = _job_action("cancel_job"), _job_action("pause_job"), _job_action("resume_job")


def cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.delete_job(args.job)
    say_deleted(f"job {response.job.id}", response.freed_bytes, response.destroyed_key_id,
                of=" of artifacts and checkpoints")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with connect(args) as client:
        checkpoints = client.list_checkpoints(args.job)
    if args.json:
        messages_json("checkpoints", checkpoints)
        return 0
    for checkpoint in checkpoints:
        figures = " ".join(f"{k}={v:.4g}" for k, v in sorted(checkpoint.metrics.items()))
        print(f"step {checkpoint.step}\t{checkpoint.size_bytes / 1e6:.1f} MB\t{figures}")
    return 0


def add_parsers(add: AddCommand) -> None:
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
