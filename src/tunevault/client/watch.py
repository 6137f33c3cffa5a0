"""`tunevault watch`: a live progress bar over a job's event stream, resilient to reconnects."""

from __future__ import annotations

import sys
import time

import grpc
from tqdm import tqdm

from tunevault.client.client import Client
from tunevault.v1 import tunevault_pb2 as pb

RECONNECT_SECONDS = 120.0


def _postfix(figures: dict[str, float]) -> str:
    parts = []
    for key, label, fmt in (("loss", "loss", ".4f"), ("eval_loss", "eval", ".4f"), ("tokens_per_second", "tok/s", ".0f")):
        if key in figures:
            parts.append(f"{label} {figures[key]:{fmt}}")
    return ", ".join(parts)


def watch_job(client: Client, job_id: str) -> int:
    """Draws step/total, loss, eval loss, tokens/s and ETA on stderr until the job ends.

    Returns 0 when the job SUCCEEDED, 1 otherwise. A dropped connection (server restart)
    is resumed from the last event seen, for up to RECONNECT_SECONDS.
    """
    bar = tqdm(total=0, unit="step", file=sys.stderr, dynamic_ncols=True, desc=job_id)
    figures: dict[str, float] = {}
    last_sequence, lost_since = 0, None
    try:
        while True:
            try:
                for event in client.stream_events(job_id, after_sequence=last_sequence):
                    last_sequence, lost_since = event.sequence, None
                    _show(bar, event, figures)
                break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > RECONNECT_SECONDS:
                    raise
                time.sleep(1.0)
    finally:
        bar.close()
    job = client.get_job(job_id)
    state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
    print(f"job {job_id} {state}", file=sys.stderr)
    if job.HasField("error"):
        print(f"error {job.error.code}: {job.error.message}", file=sys.stderr)
    for key, value in sorted(job.result.metrics.items()):
        print(f"  {key} = {value:.4g}", file=sys.stderr)
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def _show(bar: tqdm, event: pb.JobEvent, figures: dict[str, float]) -> None:
    metrics = dict(event.metrics)
    if "total_steps" in metrics and int(metrics["total_steps"]) != bar.total:
        bar.total = int(metrics["total_steps"])
        bar.refresh()
    if event.type == "step" and "step" in metrics:
        figures.update({k: metrics[k] for k in ("loss", "tokens_per_second") if k in metrics})
        bar.update(int(metrics["step"]) - bar.n)
    elif event.type in ("eval", "eval.baseline"):
        if "eval_loss" in metrics:
            figures["eval_loss"] = metrics["eval_loss"]
        bar.write(f"{event.type}: {event.message}" if event.message else event.type, file=sys.stderr)
    elif event.type not in ("step",):
        bar.write(f"{event.type}: {event.message}", file=sys.stderr)
    bar.set_postfix_str(_postfix(figures), refresh=True)
