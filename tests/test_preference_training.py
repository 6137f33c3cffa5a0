"""DPO and ORPO jobs on the tiny model: real 4-bit training, the adapter-disabled reference, eval figures, resume."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest

from tests.tiny_model import EXAMPLES, WorkerRun, run_worker, stop_after, write_job


def preference_job(jobs: Path, job_id: str, models: Path, method: str, rows: int = 24, **settings: object) -> Path:
    train = jobs / f"{job_id}.jsonl"
    jobs.mkdir(parents=True, exist_ok=True)
    train.write_text("".join((EXAMPLES / "preference.jsonl").read_text().splitlines(keepends=True)[:rows]))
    hyperparameters = {"max_steps": 4, "batch_size": 2, "eval_every": 2, "checkpoint_every": 2, "learning_rate": 5e-3,
                       "validation_fraction": 0.25, **settings}
    job_dir = write_job(jobs, job_id, models / "tiny-llama", train, hyperparameters)
    spec = json.loads((job_dir / "spec.json").read_text())
    (job_dir / "spec.json").write_text(json.dumps({**spec, "method": method}))
    return job_dir


def result_of(run: WorkerRun) -> dict:
    assert run.returncode == 0, run.log[-3000:]
    return run.of_type("result")[0]["metrics"]


def test_dpo_starts_at_log_2_because_the_reference_is_the_base_with_the_adapter_disabled(
        tmp_path: Path, tiny_models_dir: Path) -> None:
    preference_job(tmp_path, "dpo", tiny_models_dir, "dpo", preference_beta=0.5)
    run = run_worker(tmp_path, "dpo")
    result = result_of(run)
    # LoRA's B starts at zero: policy and reference are the same weights, so every pair's margin is 0
    # and its loss log(2); a second copy of the model that drifted (or a reference with the adapter on
    # after the first step) would show otherwise.
    assert run.of_type("step")[0]["metrics"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    for key in ("preference_accuracy", "base_preference_accuracy", "preference_margin", "base_preference_margin",
                "reward_accuracy", "reward_margin", "eval_loss"):
        assert key in result, key
    assert 0 <= result["preference_accuracy"] <= 1
    assert len(run.of_type("preference.eval")) == 2  # the mid-run eval (eval_every=2) and the final one
    metrics = json.loads((tmp_path / "dpo" / "artifacts" / "metrics.json").read_text())
    assert metrics["result"]["reward_margin"] == result["reward_margin"]
    assert (tmp_path / "dpo" / "artifacts" / "adapter_model.safetensors").is_file()


def test_orpo_trains_without_a_reference(tmp_path: Path, tiny_models_dir: Path) -> None:
    preference_job(tmp_path, "orpo", tiny_models_dir, "orpo", orpo_lambda=0.2)
    result = result_of(run_worker(tmp_path, "orpo"))
    assert "reward_margin" not in result  # DPO's implicit reward needs a reference; ORPO has none
    assert {"preference_accuracy", "base_preference_accuracy", "preference_margin"} <= set(result)


def test_a_paused_dpo_job_resumes_from_its_checkpoint_to_the_same_result(tmp_path: Path, tiny_models_dir: Path) -> None:
    preference_job(tmp_path / "straight", "job", tiny_models_dir, "dpo")
    straight = result_of(run_worker(tmp_path / "straight", "job"))
    preference_job(tmp_path / "paused", "job", tiny_models_dir, "dpo")
    stopped = stop_after(tmp_path / "paused", "job", "checkpoint", signal.SIGTERM, min_step=2)
    assert stopped.returncode == 128 + signal.SIGTERM
    # SIGTERM checkpoints at the next step boundary: a busy machine may finish step 3 before it lands.
    paused_at = int(stopped.events[-1]["metrics"]["step"])
    assert stopped.events[-1]["type"] == "checkpoint" and paused_at >= 2
    resumed = run_worker(tmp_path / "paused", "job")
    assert resumed.of_type("step")[0]["metrics"]["step"] == paused_at + 1  # the rest came from the checkpoint
    result = result_of(resumed)
    assert result["preference_accuracy"] == pytest.approx(straight["preference_accuracy"])
    assert result["base_preference_accuracy"] == pytest.approx(straight["base_preference_accuracy"])
    assert result["eval_loss"] == pytest.approx(straight["eval_loss"], rel=1e-3)


def test_a_killed_orpo_worker_restarts_from_its_last_checkpoint(tmp_path: Path, tiny_models_dir: Path) -> None:
    preference_job(tmp_path, "job", tiny_models_dir, "orpo")
    killed = stop_after(tmp_path, "job", "checkpoint", signal.SIGKILL, min_step=2)  # a crash: no chance to save
    assert killed.returncode == -signal.SIGKILL
    restarted = run_worker(tmp_path, "job")
    assert restarted.of_type("step")[0]["metrics"]["step"] == 3
    assert "preference_accuracy" in result_of(restarted)


def test_a_dp_dpo_job_draws_pairs_clips_per_pair_and_spends_at_most_its_epsilon(
        tmp_path: Path, tiny_models_dir: Path) -> None:
    job_dir = preference_job(tmp_path, "dp", tiny_models_dir, "dpo", rows=32, dp_epsilon=8.0, dp_delta=1e-5,
                             batch_size=4, gradient_accumulation_steps=2)
    run = run_worker(tmp_path, "dp")
    result = result_of(run)
    assert 0 < result["dp_epsilon"] <= 8.0 and result["dp_steps"] == 4
    train_pairs = run.of_type("data.prepared")[0]["metrics"]["train_rows"]
    assert result["dp_sample_rate"] == pytest.approx(8 / train_pairs)  # the expected batch counts pairs
    # Poisson draws of whole pairs: never more pairs than the set has, and chosen + rejected travel together.
    assert all(0 <= e["metrics"]["dp_examples"] <= train_pairs for e in run.of_type("step"))
    assert {"preference_accuracy", "base_preference_accuracy", "reward_margin"} <= set(result)
    privacy = json.loads((job_dir / "artifacts" / "metrics.json").read_text())["privacy"]["differential_privacy"]
    assert privacy["unit"].startswith("one preference pair") and privacy["epsilon"] == result["dp_epsilon"]
