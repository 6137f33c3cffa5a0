"""The worker process end to end on the tiny model: events, artifacts, errors, SIGTERM, determinism, resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.tiny_model import WorkerRun, run_worker, stop_after, triage_subset, write_job

TINY = "tiny-llama"
BASE_HP = {"max_steps": 6, "batch_size": 4, "eval_every": 3, "eval_accuracy_max_examples": 4, "checkpoint_every": 4}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triage_subset(tmp_path_factory.mktemp("data") / "train.jsonl", rows=40)


@pytest.fixture(scope="module")
def finished(jobs: Path, tiny_models_dir: Path, train_file: Path) -> WorkerRun:
    write_job(jobs, "job-a", tiny_models_dir / TINY, train_file, BASE_HP)
    return run_worker(jobs, "job-a")


def test_worker_trains_and_writes_adapter_and_metrics(finished: WorkerRun, jobs: Path) -> None:
    assert finished.returncode == 0, finished.log
    types = [e["type"] for e in finished.events]
    assert types[-1] == "result"
    assert {"data.prepared", "model.loaded", "eval.baseline", "step", "eval", "checkpoint"} <= set(types)
    assert types.index("eval.baseline") < types.index("step")
    assert all(set(e) >= {"type", "message", "metrics"} for e in finished.events)
    assert all(isinstance(v, float) for e in finished.events for v in e["metrics"].values())

    steps = finished.of_type("step")
    assert [int(e["metrics"]["step"]) for e in steps] == list(range(1, 7))
    assert {"step", "total_steps", "loss", "learning_rate", "tokens_per_second", "trained_tokens", "epoch"} <= set(steps[0]["metrics"])
    baseline = finished.of_type("eval.baseline")[0]["metrics"]
    assert {"base_eval_loss", "base_accuracy"} <= set(baseline)
    assert finished.of_type("data.prepared")[0]["metrics"]["total_steps"] == 6
    assert finished.of_type("model.loaded")[0]["metrics"]["load_seconds"] > 0

    result = finished.events[-1]["metrics"]
    assert {"eval_loss", "base_eval_loss", "accuracy", "base_accuracy", "train_loss", "trained_tokens", "steps",
            "train_seconds"} <= set(result)
    assert result["steps"] == 6 and result["trained_tokens"] == steps[-1]["metrics"]["trained_tokens"]
    # Even a random tiny model learns something from six steps at lr 2e-3.
    assert result["eval_loss"] < result["base_eval_loss"]

    artifacts = jobs / "job-a" / "artifacts"
    assert {p.name for p in artifacts.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "metrics.json",
                                                     "loss_curve.png", "report.md"}
    metrics = json.loads((artifacts / "metrics.json").read_text())
    assert metrics["result"] == result
    assert metrics["hyperparameters"]["max_steps"] == 6 and metrics["hyperparameters"]["learning_rate"] > 0
    assert [h["step"] for h in metrics["history"] if h["type"] == "step"] == list(range(1, 7))
    assert any(h["type"] == "eval" for h in metrics["history"])
    # The triage routes are labels: per class, the same answers the accuracy counted.
    per_class = metrics["labels"]["per_class"]
    assert sum(c["examples"] for c in per_class) == metrics["data"]["accuracy_examples"]
    assert sum(c["correct"] for c in per_class) / metrics["data"]["accuracy_examples"] == pytest.approx(result["accuracy"])
    assert "## Exact match per class" in (artifacts / "report.md").read_text()
    # The forgetting check: measured on the base before training, on the adapter after, both in the report.
    baseline = finished.of_type("eval.baseline")[0]["metrics"]
    assert result["base_general_loss"] == baseline["base_general_loss"] > 0 and result["general_loss"] > 0
    assert "general-prompt loss (forgetting check)" in (artifacts / "report.md").read_text()
    assert json.loads((artifacts / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (jobs / "job-a" / "checkpoints" / "step-4" / "adapter_model.safetensors").is_file()


def test_same_seed_data_and_hyperparameters_give_the_same_adapter_bytes(
        finished: WorkerRun, jobs: Path, tiny_models_dir: Path, train_file: Path) -> None:
    write_job(jobs, "job-a-again", tiny_models_dir / TINY, train_file, BASE_HP)
    again = run_worker(jobs, "job-a-again")
    assert again.returncode == 0, again.log
    first = (jobs / "job-a" / "artifacts" / "adapter_model.safetensors").read_bytes()
    second = (jobs / "job-a-again" / "artifacts" / "adapter_model.safetensors").read_bytes()
    assert first == second
    assert again.events[-1]["metrics"]["eval_loss"] == finished.events[-1]["metrics"]["eval_loss"]


def test_malformed_line_fails_with_its_line_number(jobs: Path, tiny_models_dir: Path, tmp_path: Path) -> None:
    data = triage_subset(tmp_path / "bad.jsonl", rows=5)
    lines = data.read_text().splitlines()
    lines[2] = lines[2][:40]  # line 3 cut short: invalid JSON
    data.write_text("\n".join(lines) + "\n")
    write_job(jobs, "job-bad", tiny_models_dir / TINY, data, {})
    run = run_worker(jobs, "job-bad")
    assert run.returncode == 1
    error = run.events[-1]
    assert error["type"] == "error" and error["code"] == "INVALID_ARGUMENT"
    assert "line 3" in error["message"] and "\n" not in error["message"]
    assert not (jobs / "job-bad" / "artifacts").exists()


# lora_r 0 goes into spec.json as given (the API would have refused it); the module names are valid
# settings that only the model can refuse.
@pytest.mark.parametrize("bad, field, resolve", [({"lora_r": 0}, "lora_r", False),
                                                 ({"lora_target_modules": ["no_such_proj"]}, "lora_target_modules", True)])
def test_bad_hyperparameter_fails_as_invalid_argument(jobs: Path, tiny_models_dir: Path, train_file: Path,
                                                      bad: dict, field: str, resolve: bool) -> None:
    write_job(jobs, f"job-bad-{field}", tiny_models_dir / TINY, train_file, {"max_steps": 1, **bad}, resolve=resolve)
    run = run_worker(jobs, f"job-bad-{field}")
    assert run.returncode == 1
    assert run.events[-1]["code"] == "INVALID_ARGUMENT" and field in run.events[-1]["message"]


def test_no_answer_within_max_seq_len_is_refused(jobs: Path, tiny_models_dir: Path, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "x"}]}] * 6
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    write_job(jobs, "job-long", tiny_models_dir / TINY, data, {"max_steps": 2, "max_seq_len": 32})
    run = run_worker(jobs, "job-long")
    assert run.returncode == 1
    assert run.events[-1]["code"] == "INVALID_ARGUMENT" and "max_seq_len" in run.events[-1]["message"]


def test_sigterm_checkpoints_at_the_next_step_and_exits_143(jobs: Path, tiny_models_dir: Path, train_file: Path) -> None:
    write_job(jobs, "job-term", tiny_models_dir / TINY, train_file,
              {"max_steps": 100_000, "batch_size": 1, "eval_every": 0, "checkpoint_every": 0})
    run = stop_after(jobs, "job-term", "step", signal.SIGTERM)
    assert run.returncode == 143, run.log
    assert run.events[-1]["type"] == "checkpoint"
    step = int(run.events[-1]["metrics"]["step"])
    assert 1 <= step < 100_000
    checkpoint = jobs / "job-term" / "checkpoints" / f"step-{step}"
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt", "rng.pt",
            "state.json"} <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((checkpoint / "state.json").read_text())["step"] == step
    assert not (jobs / "job-term" / "artifacts").exists()
    assert not any(e["type"] in ("error", "result") for e in run.events)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(jobs: Path, tiny_models_dir: Path, train_file: Path) -> None:
    hyperparameters = {"max_steps": 12, "batch_size": 2, "gradient_accumulation_steps": 2, "eval_every": 0,
                       "checkpoint_every": 3, "eval_accuracy_max_examples": 0, "lora_dropout": 0.1}
    write_job(jobs, "job-straight", tiny_models_dir / TINY, train_file, hyperparameters)
    straight = run_worker(jobs, "job-straight")
    assert straight.returncode == 0, straight.log

    # A crash (SIGKILL: no chance to checkpoint) after the first checkpoint, then a fresh worker.
    write_job(jobs, "job-crash", tiny_models_dir / TINY, train_file, hyperparameters)
    crashed = stop_after(jobs, "job-crash", "checkpoint", signal.SIGKILL, min_step=3)
    assert crashed.returncode == -signal.SIGKILL
    resumed = run_worker(jobs, "job-crash")
    assert resumed.returncode == 0, resumed.log
    first_step = int(resumed.of_type("step")[0]["metrics"]["step"])
    assert first_step > 3 and first_step % 3 == 1  # continued right after a checkpoint
    assert not resumed.of_type("eval.baseline")  # measured once, carried in the checkpoint

    expected, got = straight.events[-1]["metrics"], resumed.events[-1]["metrics"]
    assert got["steps"] == expected["steps"] == 12
    assert got["trained_tokens"] == expected["trained_tokens"]
    assert got["base_eval_loss"] == expected["base_eval_loss"]
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-4)
    history = json.loads((jobs / "job-crash" / "artifacts" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if h["type"] == "step"] == list(range(1, 13))


def test_a_second_job_on_the_same_base_and_validation_set_reuses_the_baseline_scores(
        tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "quantized"
    monkeypatch.setenv("TUNEVAULT_QUANTIZED_CACHE", str(cache))  # this test's own, empty cache
    train = triage_subset(tmp_path / "train.jsonl", rows=24)
    hp = {"max_steps": 1, "batch_size": 4, "eval_accuracy_max_examples": 4, "checkpoint_every": 0}
    baselines = []
    for job_id, extra in (("job-first", {}), ("job-second", {}), ("job-other-split", {"seed": 8})):
        write_job(tmp_path / "jobs", job_id, tiny_models_dir / TINY, train, {**hp, **extra})
        run = run_worker(tmp_path / "jobs", job_id)
        assert run.returncode == 0, run.log
        baselines.append(run.of_type("eval.baseline")[0]["metrics"])
    first, second, other = baselines
    assert (first["base_eval_cached"], second["base_eval_cached"], other["base_eval_cached"]) == (0.0, 1.0, 0.0)
    assert (second["base_eval_loss"], second["base_accuracy"]) == (first["base_eval_loss"], first["base_accuracy"])
    # Another seed holds out other validation rows: scored afresh, and kept as a second entry.
    entries = [p for folder in cache.glob("*.baseline-evals") for p in folder.iterdir()]
    assert len(entries) == 2
    assert all(set(json.loads(p.read_text())) == {"loss", "accuracy"} for p in entries), "numbers only, no text"
