"""Time to first step: submit -> first optimizer step of a job, cold (no quantized-base cache) and warm (cached).

Warm also means the base model's eval scores on this validation set are cached from the job before
(server/training/baseline_cache.py); cold deletes both.

Starts a real server on a scratch data directory, uploads the triage example, then runs
--rounds pairs of jobs on the same base: "cold" after deleting the model's quantized-base cache,
then "warm". Each job is cancelled once it has reported its first step. For each it reports
submit -> first `step` event and where that time went, from the server's event timestamps:

    queue             submit -> job.started (the scheduler claimed it and starts the worker)
    imports           python, torch, transformers and the trainer's modules (timed alone, below)
    spawn_data_prep   job.started -> data.prepared less those imports: process start, tokenizer, data
    model_load        the worker's model.loaded load_seconds (4-bit base, LoRA, optimizer)
    of_which_imports  bitsandbytes + peft, imported during the model load (timed alone)
    baseline_eval     model.loaded -> eval.baseline (eval loss and accuracy of the untouched base)
    first_step        eval.baseline -> the first step event (the step itself)

The imports are timed in fresh interpreters with the page cache warm (the fastest of three).
What a resident worker (the quantized base kept in a long-lived process) could skip is the
imports and the model load; the data, the baseline eval and the step remain per job.

On the Firecracker VMs this project's CPU machines are, the first steps mostly pay for memory
the host has not backed yet (the guest kernel runs with page_reporting, which hands freed pages
back to the host): the example's first two training steps took 10-15 s each against 4.5-6 s
afterwards, with 1.1 million minor page faults (about 4.3 GiB) in those two and under ten in
each later one. Filling a new 1 GiB array took 9.5 s on a machine that had been idle, and
0.2-0.3 s when memory freed a moment before was reused (by the same process or the next one).
glibc's malloc thresholds do not remove it. A host that backs its memory up front should not
pay this; that is not measured here.

    python bench/first_step_bench.py --models-dir .cache/models --out bench/results/first_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import DEFAULT_MODEL, start_server, wait_for_state  # noqa: E402

from tunevault.client import Client  # noqa: E402
from tunevault.server.training.quantized_model import QUANTIZED_CACHE_DIR  # noqa: E402

# What a worker imports before data.prepared, then what model loading imports on top.
WORKER_IMPORTS = (
    "import time; started = time.perf_counter();"
    "import tunevault.server.worker.train; from tunevault.server.training.pii_step import apply_pii;"
    "from tunevault.server.training.trainer import QLoRATrainer; from transformers import AutoTokenizer;"
    "early = time.perf_counter(); import bitsandbytes, peft; import transformers.integrations.bitsandbytes;"
    "print(early - started, time.perf_counter() - early)"
)
PHASES = ("job.started", "data.prepared", "model.loaded", "eval.baseline", "step")


@dataclass
class Run:
    label: str
    job_id: str
    submit_to_first_step_s: float
    load_seconds: float
    from_cache: bool
    phases_s: dict[str, float] = field(default_factory=dict)


def parse_sets(pairs: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw.strip()
    return values


def import_seconds(repeats: int = 3) -> tuple[float, float]:
    """(before data.prepared, during model load): the fastest of a few fresh interpreters, page cache warm."""
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", WORKER_IMPORTS], capture_output=True, text=True, check=True, cwd=ROOT)
        early, late = out.stdout.strip().splitlines()[-1].split()
        times.append((float(early), float(late)))
    return min(times)


def drop_cache(models_dir: Path, model: str) -> int:
    removed = 0
    for entry in (models_dir / QUANTIZED_CACHE_DIR).glob(f"{model}-*"):
        shutil.rmtree(entry)
        removed += 1
    return removed


def run_job(client: Client, label: str, dataset_id: str, model: str, hyperparameters: dict, jobs_dir: Path,
            imports_s: tuple[float, float]) -> Run:
    submitted = time.time()
    job = client.create_job(dataset_id, model, hyperparameters)
    seen: dict[str, float] = {}
    load_seconds = float("nan")
    for event in client.stream_events(job.id):
        at = event.created_at.ToNanoseconds() / 1e9
        seen.setdefault(event.type, at)
        if event.type == "model.loaded":
            load_seconds = event.metrics["load_seconds"]
        if event.type == "step" or event.type in ("error", "job.failed"):
            break
    if "step" not in seen:
        raise SystemExit(f"{label} job {job.id} ended before its first step: {client.get_job(job.id).error}")
    client.cancel_job(job.id)  # the rest of the job is not what is measured
    log = (jobs_dir / job.id / "worker.log").read_text(errors="replace")
    early, late = imports_s
    phases = {
        "queue": seen["job.started"] - submitted,
        "imports": early,  # python, torch, transformers, the trainer's modules
        "spawn_data_prep": seen["data.prepared"] - seen["job.started"] - early,  # process start, tokenizer, data
        "model_load": load_seconds,  # includes importing bitsandbytes + peft (of_which_imports)
        "of_which_imports": late,
        "baseline_eval": seen["eval.baseline"] - seen["model.loaded"],
        "first_step": seen["step"] - seen["eval.baseline"],
    }
    return Run(label, job.id, seen["step"] - submitted, load_seconds, "read from cache" in log, phases)


def resident_saving(run: Run) -> float:
    """What a long-lived worker holding the quantized base would skip: the imports and the model load."""
    return run.phases_s["imports"] + run.phases_s["model_load"]


def print_table(runs: list[Run]) -> None:
    print(f"\n{'':18}" + "".join(f"{r.label:>9}" for r in runs))
    print(f"{'submit->step 1':18}" + "".join(f"{r.submit_to_first_step_s:>8.1f}s" for r in runs))
    for name in runs[0].phases_s:
        print(f"{'  ' + name:18}" + "".join(f"{r.phases_s[name]:>8.1f}s" for r in runs))
    print(f"{'from cache':18}" + "".join(f"{r.from_cache!s:>9}" for r in runs))
    cold = [r for r in runs if r.label.startswith("cold")]
    warm = [r for r in runs if r.label.startswith("warm")]
    print(f"\nmodel load: cold {_mean(r.load_seconds for r in cold):.1f}s, warm {_mean(r.load_seconds for r in warm):.1f}s; "
          f"a resident worker could skip imports + warm load = {_mean(resident_saving(r) for r in warm):.1f}s "
          f"of {_mean(r.submit_to_first_step_s for r in warm):.1f}s (warm submit -> first step)")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "triage.jsonl")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter (default: max_steps=2, the rest auto)")
    parser.add_argument("--rounds", type=int, default=2, help="cold/warm pairs, alternated")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "first_step.json")
    args = parser.parse_args()
    hyperparameters = {"max_steps": 2, **parse_sets(args.set)}
    models_dir = args.models_dir.resolve()

    imports_s = import_seconds()
    work = Path(tempfile.mkdtemp(prefix="first-step-bench-"))
    server = start_server(work / "data", models_dir)
    try:
        with server.client() as client:
            dataset = client.upload_dataset(args.data)
            runs = []
            for label in [f"{kind}{n + 1}" for n in range(args.rounds) for kind in ("cold", "warm")]:
                if label.startswith("cold"):
                    removed = drop_cache(models_dir, args.model)
                    print(f"dropped {removed} cached quantized base(s) of {args.model}", file=sys.stderr)
                run = run_job(client, label, dataset.id, args.model, hyperparameters, work / "data" / "jobs", imports_s)
                wait_for_state(client, run.job_id, {"CANCELLED", "SUCCEEDED", "FAILED"})
                runs.append(run)
                print(f"{label}: first step {run.submit_to_first_step_s:.1f}s after submit", file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_table(runs)
    result = {
        "model": args.model, "hyperparameters": hyperparameters, "data": str(args.data),
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
        "runs": [asdict(r) for r in runs],
        "load_seconds_cold_mean": _mean(r.load_seconds for r in runs if r.label.startswith("cold")),
        "load_seconds_warm_mean": _mean(r.load_seconds for r in runs if r.label.startswith("warm")),
        "resident_worker_could_save_s": _mean(resident_saving(r) for r in runs if r.label.startswith("warm")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
