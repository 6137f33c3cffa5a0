"""GPU slots with a real server and real workers: a server told it has GPUs 0 and 1 gives two queued
jobs distinct devices, which each worker's own environment shows; a 2-GPU job waits for both.

This box has no GPU, so the workers train on the CPU (torch sees no CUDA device whatever
CUDA_VISIBLE_DEVICES says); what is under test is which devices each worker is given.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from tests.conftest import EXAMPLES, start_server, wait_for_state
from tunevault.v1 import tunevault_pb2 as pb

# Long enough that both jobs are still training when the test looks; they are cancelled, never awaited.
HP = {"max_steps": 1_000_000, "batch_size": 1, "checkpoint_every": 0, "eval_every": 0,
      "eval_accuracy_max_examples": 0, "seed": 1}


def _dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(EXAMPLES.joinpath("triage.jsonl").read_text().splitlines()[:20]) + "\n")
    return path


def _worker_environments(job_ids: set[str]) -> dict[str, list[dict[str, str]]]:
    """job id -> the environment of each of its training processes, as the kernel holds it (/proc)."""
    found: dict[str, list[dict[str, str]]] = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
            if b"tunevault.server.worker.train" not in argv:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        for job_id in job_ids & {part.decode() for part in argv}:
            found.setdefault(job_id, []).append(env)
    return found


def _wait_for_workers(job_ids: set[str], timeout: float = 300) -> dict[str, list[dict[str, str]]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _worker_environments(job_ids)
        if set(found) == job_ids:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no worker process found for {job_ids - set(_worker_environments(job_ids))}")


def _gpu_busy(metrics_address: str) -> dict[str, float]:
    """tunevault_gpu_busy by GPU, from an exposition that promtool finds nothing wrong with."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    checked = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=exposition,
                             capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked
    lines = exposition.splitlines()
    busy = [line for line in lines if line.startswith("tunevault_gpu_busy{")]
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in busy}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunevault.client.cli", *args], capture_output=True, text=True,
                          timeout=120)


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def test_two_queued_jobs_on_a_two_gpu_box_get_distinct_devices(tmp_path: Path, tiny_models_dir: Path) -> None:
    server = start_server(tmp_path / "data", tiny_models_dir, "--gpus", "0,1", "--max-concurrent-jobs", "2")
    try:
        with server.client() as client:
            dataset = client.upload_dataset(_dataset(tmp_path)).id
            first, second = (client.create_job(dataset, "tiny-llama", HP).id for _ in range(2))
            both = client.create_job(dataset, "tiny-llama", HP, gpus=2, max_attempts=1).id
            for job_id in (first, second):
                wait_for_state(client, job_id, {"RUNNING"})
            environments = _wait_for_workers({first, second})

            visible = {job_id: envs[0]["CUDA_VISIBLE_DEVICES"] for job_id, envs in environments.items()}
            assert sorted(visible.values()) == ["0", "1"], visible
            for job_id in (first, second):  # the API says what the worker sees
                job = client.get_job(job_id)
                assert (job.gpus, list(job.devices)) == (1, [int(visible[job_id])])
            slots = {g.index: (g.busy, g.job_id) for g in client.get_status().gpus}
            assert slots == {int(visible[first]): (True, first), int(visible[second]): (True, second)}
            assert _gpu_busy(server.metrics_address) == {"0": 1.0, "1": 1.0}

            # One device free is not enough for the 2-GPU job: it keeps waiting, in the queue.
            wait_for_state(client, both, {"QUEUED"})  # validated
            client.cancel_job(first)
            wait_for_state(client, first, {"CANCELLED"})
            assert client.get_job(first).devices == []
            assert client.get_job(both).state == pb.JOB_STATE_QUEUED
            assert client.get_job(second).state == pb.JOB_STATE_RUNNING
            client.cancel_job(second)
            wait_for_state(client, second, {"CANCELLED"})

            # Both free: it starts holding both (under torchrun, as two ranks).
            wait_for_state(client, both, {"RUNNING", "FAILED", "SUCCEEDED"})
            started = [e for e in client.stream_events(both, follow=False) if e.type == "job.started"]
            assert started and started[0].message.endswith("on GPU 0,1"), started
            client.cancel_job(both)
            wait_for_state(client, both, {"CANCELLED", "FAILED"})
            assert all(not g.busy for g in client.get_status().gpus)
    finally:
        server.stop()


def test_more_gpus_than_the_box_has_is_refused_naming_the_field(tmp_path: Path, tiny_models_dir: Path) -> None:
    server = start_server(tmp_path / "data", tiny_models_dir, "--gpus", "0,1", "--max-concurrent-jobs", "0")
    try:
        with server.client() as client:
            dataset = client.upload_dataset(_dataset(tmp_path)).id
            too_many = _refused(lambda: client.create_job(dataset, "tiny-llama", HP, gpus=3))
            assert too_many.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert too_many.details().startswith("gpus:") and "has 2" in too_many.details()
            negative = _refused(lambda: client.create_job(dataset, "tiny-llama", HP, gpus=-1))
            assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and negative.details().startswith("gpus:")
            assert client.create_job(dataset, "tiny-llama", HP).gpus == 1  # unset: one GPU on a GPU box
            assert client.create_job(dataset, "tiny-llama", HP, gpus=0).gpus == 0  # the CPU, asked for
            connection = ["--address", server.address, "--token", server.admin_token]
            submitted = _cli("submit", str(_dataset(tmp_path)), "--base-model", "tiny-llama", "--gpus", "2",
                             *connection)
            assert submitted.returncode == 0, submitted.stderr
            assert client.get_job(submitted.stdout.split()[-1]).gpus == 2
            status = _cli("status", *connection)
            assert "gpus: 0 free, 1 free" in status.stdout, status.stdout
    finally:
        server.stop()
