"""End to end through the real server: real 4-bit QLoRA jobs to SUCCEEDED, adapters that work."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL, EXAMPLES, RunningServer, wait_for_state
from tunevault.v1 import tunevault_pb2 as pb

TINY_STEPS = {"max_steps": 4, "batch_size": 2, "eval_every": 2, "eval_accuracy_max_examples": 2}


def _tiny_dataset(tmp_path: Path, rows: int = 24) -> Path:
    lines = EXAMPLES.joinpath("triage.jsonl").read_text().splitlines()[:rows]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tiny_job_runs_to_success_and_streams_its_events(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_tiny_dataset(tmp_path))
        job = client.create_job(dataset.id, "tiny-llama", TINY_STEPS)
        events = list(client.stream_events(job.id))  # follows until the job ends
        finished = client.get_job(job.id)
        assert finished.state == pb.JOB_STATE_SUCCEEDED, (finished, server.log())
        types = [e.type for e in events]
        assert types[0] == "job.created" and types[-1] == "job.succeeded"
        steps = [e for e in events if e.type == "step"]
        assert [int(e.metrics["step"]) for e in steps] == [1, 2, 3, 4]
        assert all({"loss", "learning_rate", "tokens_per_second", "total_steps"} <= set(e.metrics) for e in steps)
        assert any(e.type == "eval" and "eval_loss" in e.metrics for e in events)
        assert [e.sequence for e in events] == sorted(e.sequence for e in events)
        assert finished.step == 4 and finished.total_steps == 4 and finished.trained_tokens > 0
        assert "eval_loss" in finished.result.metrics

        archive = client.download_artifact(job.id, tmp_path)
        with tarfile.open(archive) as tar:
            names = {Path(n).name for n in tar.getnames()}
        assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json"} <= names

        completion = client.generate("Route: itchy rash", job_id=job.id, max_tokens=4)
        assert completion.completion_tokens >= 1


def test_cancel_stops_a_running_worker(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(_tiny_dataset(tmp_path))
        job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 100000, "batch_size": 1})
        for event in client.stream_events(job.id):
            if event.type == "step":
                break
        client.cancel_job(job.id)
        cancelled = wait_for_state(client, job.id, {"CANCELLED", "FAILED", "SUCCEEDED"}, timeout=120)
        assert cancelled.state == pb.JOB_STATE_CANCELLED
        assert client.get_job(job.id).step < 100000


def test_worker_failure_becomes_failed_with_a_readable_error(server: RunningServer, tmp_path: Path) -> None:
    # Every answer lies beyond max_seq_len, so no row has a token to learn from: the worker
    # must refuse the job with a reason, not crash with a traceback.
    rows = [{"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "x"}]}] * 8
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with server.client() as client:
        dataset = client.upload_dataset(path)
        job = client.create_job(dataset.id, "tiny-llama", {"max_steps": 2, "max_seq_len": 32})
        failed = wait_for_state(client, job.id, {"FAILED", "SUCCEEDED"}, timeout=300)
        assert failed.state == pb.JOB_STATE_FAILED
        assert failed.error.code and failed.error.message
        assert "Traceback" not in failed.error.message


@pytest.mark.slow
def test_cli_fine_tunes_the_default_model_and_the_adapter_loads_in_plain_peft(
        tmp_path: Path, models_dir: Path) -> None:
    """The real CLI against the real server with the default model, then PEFT in a fresh process."""
    from tests.conftest import start_server

    running = start_server(tmp_path / "data", models_dir)
    env_cli = [sys.executable, "-m", "tunevault.client.cli"]
    address = ["--address", running.address, "--token", running.admin_token]
    try:
        submit = subprocess.run(
            [*env_cli, "submit", str(EXAMPLES / "triage.jsonl"), "--model", DEFAULT_MODEL, *address,
             "--set", "max_steps=6", "--set", "batch_size=4", "--set", "eval_accuracy_max_examples=0",
             "--set", "learning_rate=2e-3", "--wait"],
            capture_output=True, text=True, timeout=1200)
        assert submit.returncode == 0, submit.stderr + running.log()
        job_id = submit.stdout.strip()
        assert job_id.startswith("job_") and "\n" not in job_id

        status = json.loads(subprocess.run([*env_cli, "status", job_id, "--json", *address],
                                           capture_output=True, text=True, check=True).stdout)
        assert status["state"] == "JOB_STATE_SUCCEEDED"
        archive = Path(subprocess.run([*env_cli, "download", job_id, "-o", str(tmp_path), *address],
                                      capture_output=True, text=True, check=True).stdout.strip())
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "adapter", filter="data")
        adapter_dir = next((tmp_path / "adapter").glob("*-adapter"))
    finally:
        running.stop()

    probe = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
base_dir, adapter_dir = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(base_dir)
ids = tok.apply_chat_template([{"role": "user", "content": "Patient with crushing chest pain and ST elevation."}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)
def greedy(model):
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()
model = AutoModelForCausalLM.from_pretrained(base_dir)
before = greedy(model)
tuned = PeftModel.from_pretrained(model, adapter_dir)
after = greedy(tuned)
print(before != after)
"""
    result = subprocess.run([sys.executable, "-c", probe, str(models_dir / DEFAULT_MODEL), str(adapter_dir)],
                            capture_output=True, text=True, timeout=600,
                            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"
