"""The per-job report: the picture and the Markdown from metrics alone, and `tunevault report` against a real server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, RunningServer, start_server, wait_for_state
from tunevault.server.training.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 40


def _history(steps: int, eval_every: int, stop_at: int | None = None) -> list[dict[str, Any]]:
    """As the trainer records it: the baseline, a record per step, evals, then the final eval."""
    history: list[dict[str, Any]] = [{"type": "eval.baseline", "step": 0, "base_eval_loss": 3.25, "base_accuracy": 0.125}]
    last = stop_at or steps
    for step in range(1, last + 1):
        history.append({"type": "step", "step": step, "total_steps": steps,
                        "loss": 3.0 * math.exp(-step / 12) + 0.4 + 0.05 * math.sin(step), "learning_rate": 2e-4,
                        "tokens_per_second": 850.0, "trained_tokens": 480 * step, "epoch": step // 16,
                        "label_tokens": 36, "step_seconds": 0.56, "step_tokens": 480, "step_slots": 496})
        if step % eval_every == 0 and step < steps:
            history.append({"type": "eval", "step": step, "eval_loss": 2.6 * math.exp(-step / 15) + 0.7,
                            "eval_perplexity": 0.0})
    return history


def realistic_metrics() -> dict[str, Any]:
    """A metrics.json as QLoRATrainer._export writes it for a job with accuracy and early stopping."""
    history = _history(STEPS, eval_every=10)
    history.append({"type": "eval", "step": STEPS, "eval_loss": 0.7712, "eval_perplexity": math.exp(0.7712),
                    "accuracy": 0.875})
    return {
        "job_id": "job_01JTESTREPORT",
        "result": {
            "eval_loss": 0.7712, "eval_perplexity": math.exp(0.7712), "base_eval_loss": 3.25,
            "base_eval_perplexity": math.exp(3.25), "best_step": 30.0, "stopped_early": 0.0, "accuracy": 0.875,
            "base_accuracy": 0.125, "train_loss": 0.4431, "trained_tokens": 19200.0, "steps": float(STEPS),
            "train_seconds": 22.4, "tokens_per_second": 857.1, "padding_fraction": 0.031,
            "peak_memory_bytes": 1_610_612_736.0, "estimated_peak_memory_bytes": 2_147_483_648.0,
        },
        "hyperparameters": {
            "epochs": 3, "max_steps": STEPS, "learning_rate": 0.0002, "batch_size": 4, "gradient_accumulation_steps": 2,
            "lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "lora_target_modules": ["k_proj", "q_proj", "v_proj"],
            "max_seq_len": 1024, "warmup_ratio": 0.05, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "lr_scheduler": "cosine", "eval_every": 10, "validation_fraction": 0.1, "seed": 1234,
            "eval_accuracy_max_examples": 32, "checkpoint_every": 20, "export_merged": False,
            "gradient_checkpointing": False, "early_stopping_patience": 3,
        },
        "data": {"train_rows": 288, "validation_rows": 32, "accuracy_examples": 32, "train_tokens": 61234,
                 "dropped_rows": 1, "truncated_rows": 4},
        "runtime": {"device": "cpu", "threads": 2, "compute_dtype": "float32",
                    "quantization": "bitsandbytes nf4, double quantization"},
        "history": history,
    }


def minimal_metrics() -> dict[str, Any]:
    """No validation figures, no accuracy, no early stopping: only training steps."""
    history = [h for h in _history(5, eval_every=100) if h["type"] == "step"]
    return {"job_id": "job_min", "result": {"train_loss": 1.5, "steps": 5.0}, "hyperparameters": {"max_steps": 5},
            "data": {"train_rows": 10}, "runtime": {"device": "cpu"}, "history": history}


# Unit ---------------------------------------------------------------------------------

def test_label_like_answers_get_a_per_class_table_and_the_mistakes(tmp_path: Path) -> None:
    metrics = {**realistic_metrics(), "labels": {
        "per_class": [{"label": "cardiology", "examples": 3, "correct": 2, "accuracy": 2 / 3},
                      {"label": "a|b", "examples": 1, "correct": 1, "accuracy": 1.0}],
        "confusions": [{"expected": "cardiology", "answered": "", "count": 1}]}}
    _, report = write_report(tmp_path, metrics)
    text = report.read_text()
    assert "| cardiology | 3 | 2 | 66.7% |" in text
    assert "| a\\|b | 1 | 1 | 100.0% |" in text  # a label cannot open a cell
    assert "| cardiology | (nothing) | 1 |" in text
    (tmp_path / "plain").mkdir()
    _, plain = write_report(tmp_path / "plain", realistic_metrics())
    assert "per class" not in plain.read_text()


def test_writes_a_small_readable_png_and_a_report_with_the_key_figures(tmp_path: Path) -> None:
    curve, report = write_report(tmp_path, realistic_metrics())
    assert (curve.name, report.name) == ("loss_curve.png", "report.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curve.png", "report.md"]  # no temporaries left

    data = curve.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 20_000 < len(data) < 120_000
    from matplotlib.image import imread
    height, width, _ = imread(curve).shape
    assert (width, height) == (700, 400)

    text = report.read_text()
    assert text.startswith("# Fine-tuning report: job_01JTESTREPORT\n")
    for figure in ("| training rows | 288 |", "| validation rows | 32 |", "| training tokens | 61,234 |",
                   "| eval loss | 3.25 | 0.7712 | -2.479 (-76.3%) |",
                   "| exact-match accuracy | 12.5% | 87.5% | +75.0 points |",
                   "| lora_target_modules | k_proj, q_proj, v_proj |", "| learning_rate | 0.0002 |",
                   "| gradient_checkpointing | false |", "| seed | 1234 |", "857 tokens/s",
                   "1.50 GiB measured, 2.00 GiB estimated, measured is 75% of the estimate",
                   "![Training and validation loss](loss_curve.png)"):
        assert figure in text
    # Every resolved hyperparameter is listed.
    assert all(f"| {name} |" in text for name in realistic_metrics()["hyperparameters"])
    assert "Early stopping: ran all 40 steps; the final weights are the result" in text


def test_same_metrics_give_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = write_report(tmp_path / "a", realistic_metrics())
    second = write_report(tmp_path / "b", realistic_metrics())
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_metrics_without_eval_accuracy_or_early_stopping_still_make_a_report(tmp_path: Path) -> None:
    curve, report = write_report(tmp_path, minimal_metrics())
    assert curve.read_bytes().startswith(PNG_SIGNATURE)
    text = report.read_text()
    assert "job_min" in text and "| training rows | 10 |" in text and "| train loss (last steps) | 1.5 |" in text
    assert "Evaluation" not in text and "Early stopping" not in text and "accuracy" not in text


def test_an_early_stop_that_kept_the_best_adapter_says_so(tmp_path: Path) -> None:
    metrics = realistic_metrics()
    history = _history(STEPS, eval_every=5, stop_at=25)
    best = next(h for h in history if h.get("step") == 10 and h["type"] == "eval")["eval_loss"]
    history.append({"type": "eval", "step": 25, "eval_loss": best, "eval_perplexity": math.exp(best)})
    metrics["history"] = history
    metrics["result"].update(eval_loss=best, best_step=10.0, stopped_early=1.0, steps=25.0)
    text = write_report(tmp_path, metrics)[1].read_text()
    assert "Early stopping: stopped early at step 25; the result is the adapter of step 10, the best eval loss." in text


def test_the_report_shows_counts_never_text_from_the_data(tmp_path: Path) -> None:
    metrics = realistic_metrics()
    metrics["data"]["first_bad_row"] = "Patient Jane Roe, DOB 1970-01-01"  # a field a later trainer might add
    text = write_report(tmp_path, metrics)[1].read_text()
    assert "Jane Roe" not in text and "first bad row" not in text


def test_a_read_only_home_is_never_written_to(tmp_path: Path) -> None:
    """As in a container with a read-only root: matplotlib must neither fail nor warn about $HOME."""
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(minimal_metrics()))
    script = ("import json, sys; from pathlib import Path; from tunevault.server.training.report import write_report; "
              "write_report(Path(sys.argv[1]).parent, json.loads(Path(sys.argv[1]).read_text()))")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    run = subprocess.run([sys.executable, "-c", script, str(metrics)], env={**env, "HOME": str(home)},
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "matplotlib" not in run.stderr.lower()
    assert list(home.iterdir()) == [] and (tmp_path / "loss_curve.png").is_file()


# Against a real server ----------------------------------------------------------------

TINY_HP = {"max_steps": 4, "batch_size": 2, "eval_every": 2, "eval_accuracy_max_examples": 2}


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[tuple[RunningServer, str]]:
    """One tiny job run to SUCCEEDED on a real server, shared by the CLI tests below."""
    root = tmp_path_factory.mktemp("report-server")
    server = start_server(root / "data", tiny_models_dir)
    train = root / "train.jsonl"
    train.write_text("\n".join(EXAMPLES.joinpath("triage.jsonl").read_text().splitlines()[:24]) + "\n")
    try:
        with server.client() as client:
            job = client.create_job(client.upload_dataset(train).id, "tiny-llama", TINY_HP)
            done = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=600)
            assert done.HasField("result"), server.log()
        yield server, job.id
    finally:
        server.stop()


def _cli(server: RunningServer, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunevault.client.cli", *args, "--address", server.address,
               "--token", server.admin_token]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_report_json_prints_the_jobs_metrics(finished_job: tuple[RunningServer, str], tmp_path: Path) -> None:
    server, job_id = finished_job
    run = _cli(server, "report", job_id, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout)
    assert metrics["job_id"] == job_id and metrics["result"]["steps"] == 4
    assert list(tmp_path.iterdir()) == []  # without --out nothing is kept


def test_report_prints_and_saves_the_report(finished_job: tuple[RunningServer, str], tmp_path: Path) -> None:
    server, job_id = finished_job
    out = tmp_path / "saved"
    run = _cli(server, "report", job_id, "--out", str(out))
    assert (out / "metrics.json").is_file(), run.stderr
    assert run.returncode == 0, run.stderr
    assert run.stdout == (out / "report.md").read_text()
    assert run.stdout.startswith(f"# Fine-tuning report: {job_id}\n") and "| eval loss |" in run.stdout
    assert (out / "loss_curve.png").read_bytes().startswith(PNG_SIGNATURE)


def test_report_of_an_unknown_job_is_not_found(finished_job: tuple[RunningServer, str]) -> None:
    server, _ = finished_job
    run = _cli(server, "report", "job_doesnotexist")
    assert run.returncode == 2 and "NOT_FOUND" in run.stderr and run.stdout == ""


def test_report_of_an_unfinished_job_says_it_has_none_yet(finished_job: tuple[RunningServer, str], tmp_path: Path) -> None:
    server, _ = finished_job
    train = tmp_path / "train.jsonl"
    train.write_text(EXAMPLES.joinpath("triage.jsonl").read_text())
    with server.client() as client:
        # Held back by not_before so it never takes the CPU from the rest of the suite.
        job = client.create_job(client.upload_dataset(train).id, "tiny-llama", TINY_HP, not_before=time.time() + 3600)
        try:
            run = _cli(server, "report", job.id)
        finally:
            client.cancel_job(job.id)
    assert run.returncode == 2 and "FAILED_PRECONDITION" in run.stderr and "SUCCEEDED" in run.stderr
