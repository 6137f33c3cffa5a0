"""One job over two processes (torchrun, gloo on the CPU), for real on the tiny model: same curve as one process, and resume after a rank is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import WorkerRun, run_worker, triage_subset, write_job
from tunevault.server.scheduler.launch import worker_argv

TINY = "tiny-llama"
# No LoRA dropout: the ranks draw their dropout masks from one seed each, not from one stream as
# a single process does, so with dropout the two curves would differ by design, not by error.
# Two micro-batches a step: each rank takes one of them.
HP = {"max_steps": 6, "batch_size": 4, "gradient_accumulation_steps": 2, "eval_every": 3, "checkpoint_every": 2,
      "lora_dropout": 0.0, "eval_accuracy_max_examples": 0, "learning_rate": 2e-3}
MODULE = "tunevault.server.worker.train"


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triage_subset(tmp_path_factory.mktemp("data") / "train.jsonl", rows=40)


def _env() -> dict[str, str]:
    # One thread per rank: two ranks on a shared CPU, the same arithmetic in every run.
    return {**os.environ, "TUNEVAULT_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}


def start_ranks(jobs: Path, job_id: str, ranks: int) -> subprocess.Popen:
    """The job as the scheduler starts it for `ranks` devices: torchrun, events on stdout, logs in a file."""
    log = (jobs / job_id / "worker.log").open("ab")
    argv = worker_argv(sys.executable, MODULE, jobs, job_id, ranks=ranks)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(), start_new_session=True)


def run_ranks(jobs: Path, job_id: str, ranks: int) -> WorkerRun:
    process = start_ranks(jobs, job_id, ranks)
    out, _ = process.communicate(timeout=900)
    return WorkerRun(process.returncode, [json.loads(line) for line in out.splitlines()],
                     (jobs / job_id / "worker.log").read_text(errors="replace"))


def step_losses(run: WorkerRun) -> list[float]:
    return [e["metrics"]["loss"] for e in run.of_type("step")]


def rank_pids(torchrun_pid: int) -> list[int]:
    """The worker ranks torchrun started: its children running the worker module."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    return [int(pid) for pid in children if MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_two_ranks_follow_the_single_process_loss_curve(tmp_path: Path, tiny_models_dir: Path, train_file: Path) -> None:
    write_job(tmp_path, "one", tiny_models_dir / TINY, train_file, HP)
    write_job(tmp_path, "two", tiny_models_dir / TINY, train_file, HP)
    one = run_worker(tmp_path, "one")
    two = run_ranks(tmp_path, "two", ranks=2)
    assert one.returncode == 0, one.log
    assert two.returncode == 0, two.log
    # Rank 0 alone speaks: one event per step, as from one process.
    assert [int(e["metrics"]["step"]) for e in two.of_type("step")] == list(range(1, 7))
    # The same global batch each step, summed over ranks: only float summation order differs.
    assert step_losses(two) == pytest.approx(step_losses(one), rel=2e-3)
    a, b = one.events[-1]["metrics"], two.events[-1]["metrics"]
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=2e-3)
    assert b["trained_tokens"] == a["trained_tokens"]
    assert (tmp_path / "two" / "artifacts" / "adapter_model.safetensors").is_file()


def test_a_killed_rank_fails_the_run_and_the_restart_resumes_from_the_checkpoint(
        tmp_path: Path, tiny_models_dir: Path, train_file: Path) -> None:
    write_job(tmp_path, "job", tiny_models_dir / TINY, train_file, HP)
    process = start_ranks(tmp_path, "job", ranks=2)
    assert process.stdout is not None
    killed_after = None
    for line in process.stdout:
        event = json.loads(line)
        if event["type"] == "checkpoint":
            killed_after = int(event["metrics"]["step"])
            os.kill(rank_pids(process.pid)[-1], signal.SIGKILL)  # one rank only, mid-run
            break
    process.stdout.read()
    assert process.wait(300) != 0  # torchrun tears the group down and reports the failure
    assert killed_after is not None and killed_after < HP["max_steps"]

    resumed = run_ranks(tmp_path, "job", ranks=2)
    assert resumed.returncode == 0, resumed.log
    steps = [int(e["metrics"]["step"]) for e in resumed.of_type("step")]
    assert steps[0] >= killed_after + 1 and steps[-1] == HP["max_steps"]
    assert f"resumed from {tmp_path / 'job' / 'checkpoints'}" in resumed.log
    assert resumed.events[-1]["type"] == "result"


def test_sigterm_pauses_every_rank_at_one_step_with_a_checkpoint_and_the_restart_finishes(
        tmp_path: Path, tiny_models_dir: Path, train_file: Path) -> None:
    """Pause and cancel are a SIGTERM to torchrun, which forwards it to every rank: they agree on the step to stop at."""
    write_job(tmp_path, "job", tiny_models_dir / TINY, train_file, {**HP, "checkpoint_every": 0})
    process = start_ranks(tmp_path, "job", ranks=2)
    assert process.stdout is not None
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["type"] == "step" and events[-1]["metrics"]["step"] >= 2:
            process.send_signal(signal.SIGTERM)
            break
    events.extend(json.loads(line) for line in process.stdout)
    process.wait(300)
    saved = [int(e["metrics"]["step"]) for e in events if e["type"] == "checkpoint"]
    assert len(saved) == 1 and 2 <= saved[0] < HP["max_steps"]  # rank 0 wrote the one checkpoint of the stop

    resumed = run_ranks(tmp_path, "job", ranks=2)
    assert resumed.returncode == 0, resumed.log
    assert [int(e["metrics"]["step"]) for e in resumed.of_type("step")] == list(range(saved[0] + 1, HP["max_steps"] + 1))
