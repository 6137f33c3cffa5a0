"""End to end: a DPO job through the real CLI on the default model raises held-out preference accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL, EXAMPLES, start_server

# The demo's settings (examples/demo.py DPO_SETTINGS): 10 steps of 4 pairs.
DPO_SETTINGS = ["max_steps=10", "batch_size=4", "learning_rate=0.0005", "preference_beta=0.1", "eval_every=0"]


@pytest.mark.slow
def test_cli_dpo_on_the_default_model_prefers_the_chosen_answers_on_held_out_questions(
        tmp_path: Path, models_dir: Path) -> None:
    running = start_server(tmp_path / "data", models_dir)
    cli = [sys.executable, "-m", "tunevault.client.cli"]
    address = ["--address", running.address, "--token", running.admin_token]
    try:
        submit = subprocess.run(
            [*cli, "submit", str(EXAMPLES / "preference.jsonl"), "--model", DEFAULT_MODEL, "--method", "dpo",
             "--validation-file", str(EXAMPLES / "preference_validation.jsonl"), *address,
             *[arg for setting in DPO_SETTINGS for arg in ("--set", setting)], "--wait"],
            capture_output=True, text=True)
        assert submit.returncode == 0, submit.stderr + running.log()
        job_id = submit.stdout.strip()
        status = json.loads(subprocess.run([*cli, "status", job_id, "--json", *address],
                                           capture_output=True, text=True, check=True).stdout)
    finally:
        running.stop()
    assert status["state"] == "JOB_STATE_SUCCEEDED"
    assert status["method"] == "TRAINING_METHOD_DPO"
    metrics = status["result"]["metrics"]
    print(json.dumps({k: v for k, v in metrics.items() if "preference" in k or "reward" in k}, indent=1))
    # The validation questions are about medicines no training pair names.
    assert metrics["preference_accuracy"] >= metrics["base_preference_accuracy"] + 0.4
    assert metrics["preference_accuracy"] >= 0.8
    assert metrics["preference_margin"] > metrics["base_preference_margin"]
    assert metrics["reward_margin"] > 0 and metrics["reward_accuracy"] >= 0.8
