"""Defaults on real text, side by side in one run (issue 28): the product's defaults against a plain recipe.

For each task of bench/real_tasks.py it starts a real server, uploads the task's training rows and
trains one job per arm on the default model, then asks every adapter (and the base model, zero-shot
and few-shot) for each held-out row's label through Generate, greedy, and scores exact match per
class with the confusions. Arms:

- defaults: no hyperparameters at all, as a new user submits;
- plain: a fixed recipe of the kind a tutorial gives (lr 2e-4, 3 epochs, r 16, batch 8, dropout 0.05).

    .venv/bin/python bench/defaults_bench.py --tasks package-section --max-test 60 --out bench/results/defaults.json

Each job takes 10-15 minutes on a 2-core CPU; the whole suite is a GPU-session bench.

First run (2026-12-05, 2-core CPU, SmolLM2-135M-Instruct, package-section, 60 held-out rows): exact
match zero-shot 0.000, few-shot 0.083, defaults 0.450, plain recipe 0.450 (issue 28's bar: 0.90).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from real_tasks import SOURCES, Example, Score, Task, build  # noqa: E402
from tests.conftest import start_server  # noqa: E402

from tunevault.client.client import Client  # noqa: E402
from tunevault.v1 import tunevault_pb2 as pb  # noqa: E402

ARMS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "plain": {"learning_rate": 2e-4, "epochs": 3, "lora_r": 16, "lora_alpha": 32, "batch_size": 8,
              "lora_dropout": 0.05},
}
TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def write_rows(task: Task, examples: list[Example], path: Path) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in task.chat_rows(examples)) + "\n")
    return path


def train(client: Client, dataset_id: str, model: str, hyperparameters: dict[str, Any]) -> pb.Job:
    job = client.create_job(dataset_id, model, hyperparameters)
    while job.state not in TERMINAL:
        time.sleep(5)
        job = client.get_job(job.id)
    return job


def few_shot_history(task: Task) -> list[tuple[str, str]]:
    """One training row per class as earlier exchanges: the base model is shown every label once."""
    first: dict[str, Example] = {}
    for example in task.train:
        first.setdefault(example.label, example)
    return [(task.prompt(e), e.label) for e in first.values()]


def score(client: Client, task: Task, tests: list[Example], **target: Any) -> dict[str, Any]:
    result = Score()
    for example in tests:
        answer = client.generate(task.prompt(example), max_tokens=8, temperature=0.0, **target).text
        result.add(example.label, answer)
    return result.as_dict()


def run_task(client: Client, task: Task, work: Path, model: str, max_test: int) -> dict[str, Any]:
    tests = task.test[:max_test] if max_test else task.test
    dataset = client.upload_dataset(write_rows(task, task.train, work / f"{task.name}.train.jsonl"))
    figures: dict[str, Any] = {"classes": len(task.labels), "train_rows": len(task.train), "test_rows": len(tests),
                               "base_zero_shot": score(client, task, tests, base_model=model),
                               "base_few_shot": score(client, task, tests, base_model=model,
                                                      history=few_shot_history(task))}
    for arm, hyperparameters in ARMS.items():
        began = time.monotonic()
        job = train(client, dataset.id, model, hyperparameters)
        figures[arm] = {"state": pb.JobState.Name(job.state), "seconds": round(time.monotonic() - began, 1),
                        "metrics": dict(job.result.metrics)}
        if job.state == pb.JOB_STATE_SUCCEEDED:
            figures[arm].update(score(client, task, tests, job_id=job.id))
        print(f"{task.name} {arm}: {figures[arm].get('exact_match', 'failed')}", file=sys.stderr, flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model store entry")
    parser.add_argument("--tasks", nargs="*", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--max-test", type=int, default=0, help="held-out rows scored per task (0: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunevault-defaults-"))
    server = start_server(work / "data", args.models_dir.resolve(), "--rate-limit", "1e9")
    report: dict[str, Any] = {}
    try:
        with Client(server.address, server.admin_token) as client:
            for name in args.tasks:
                report[name] = run_task(client, build(name), work, args.model, args.max_test)
    finally:
        server.stop()
    print(f"{'task':<20}{'zero-shot':>10}{'few-shot':>10}" + "".join(f"{arm:>10}" for arm in ARMS))
    for name, figures in report.items():
        cells = [figures["base_zero_shot"]["exact_match"], figures["base_few_shot"]["exact_match"],
                 *(figures[arm].get("exact_match", float("nan")) for arm in ARMS)]
        print(f"{name:<20}" + "".join(f"{cell:>10.3f}" for cell in cells))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
