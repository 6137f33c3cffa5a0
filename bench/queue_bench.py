"""Queue benchmark: CreateJob/GetJob latency and throughput over loopback, and queue-to-start delay.

Starts a real server on a scratch data directory, fills it with 10,000 jobs (held with
not_before so none trains), then drives CreateJob and GetJob from 1, 8 and 32 concurrent
clients (threads, one channel each). Finally it measures, for a few jobs that do run (tiny
model), the delay from QUEUED to the worker's job.started event and to the worker's first
own event (the process is up and reporting). Prints a table and writes JSON (--out).

    python bench/queue_bench.py --models-dir .cache/models --out bench/results/queue.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import DEFAULT_MODEL, start_server  # noqa: E402

from tunevault.client import Client  # noqa: E402

ROW = {"messages": [{"role": "user", "content": "Itchy rash on both shins."}, {"role": "assistant", "content": "dermatology"}]}
HOLD = time.time() + 300 * 86400


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fill(address: str, token: str, dataset: str, count: int) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with Client(address, token) as client:
            made = [client.create_job(dataset, "tiny-llama", {"max_steps": 1}, not_before=HOLD).id for _ in range(n)]
        with lock:
            ids.extend(made)

    threads = [threading.Thread(target=work, args=(count // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids


def drive(address: str, token: str, concurrency: int, seconds: float, call) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def work(index: int) -> None:
        with Client(address, token) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                call(client, index)
                latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    begun = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begun
    flat = [x for per in latencies for x in per]
    return {"concurrency": concurrency, "requests": len(flat), "throughput_rps": len(flat) / elapsed,
            "p50_ms": 1000 * percentile(flat, 0.50), "p99_ms": 1000 * percentile(flat, 0.99)}


def start_delays(address: str, token: str, dataset: str, runs: int) -> dict:
    to_claim, to_worker = [], []
    with Client(address, token) as client:
        for _ in range(runs):
            job = client.create_job(dataset, "tiny-llama", {"max_steps": 1, "eval_accuracy_max_examples": 0},
                                    priority=1000)
            queued = started = first_worker = None
            for event in client.stream_events(job.id):
                at = event.created_at.ToNanoseconds() / 1e9
                if event.type == "job.queued":
                    queued = at
                elif event.type == "job.started":
                    started = at
                elif started and first_worker is None and not event.type.startswith("job."):
                    first_worker = at
            to_claim.append(started - queued)
            to_worker.append(first_worker - queued)
    return {"runs": runs, "queued_to_claimed_ms_p50": 1000 * statistics.median(to_claim),
            "queued_to_first_worker_event_s_p50": statistics.median(to_worker),
            "queued_to_first_worker_event_s_max": max(to_worker)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path(".cache/models"))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level and RPC")
    parser.add_argument("--start-runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tests.tiny_model import make_tiny_model

    scratch = Path(tempfile.mkdtemp(prefix="tunevault-queue-bench-"))
    models = scratch / "models"
    make_tiny_model(models, args.models_dir.resolve() / DEFAULT_MODEL)
    server = start_server(scratch / "data", models, "--rate-limit", "1e9", "--max-pending-jobs", "100000000")
    token = server.admin_token
    try:
        data = scratch / "d.jsonl"
        data.write_text("\n".join(json.dumps(ROW) for _ in range(16)) + "\n")
        with Client(server.address, token) as client:
            dataset = client.upload_dataset(data).id
        began = time.perf_counter()
        ids = fill(server.address, token, dataset, args.jobs)
        print(f"filled {len(ids)} jobs in {time.perf_counter() - began:.1f}s", file=sys.stderr)

        results = {"jobs_in_database": len(ids), "create_job": [], "get_job": []}
        for concurrency in (1, 8, 32):
            results["create_job"].append(drive(server.address, token, concurrency, args.seconds,
                lambda c, i: c.create_job(dataset, "tiny-llama", {"max_steps": 1}, not_before=HOLD)))
            results["get_job"].append(drive(server.address, token, concurrency, args.seconds,
                lambda c, i: c.get_job(ids[(i * 7919 + int(time.perf_counter() * 1e6)) % len(ids)])))
        results["start_delay"] = start_delays(server.address, token, dataset, args.start_runs)
    finally:
        server.stop()

    print(f"{'rpc':<10}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for rpc in ("create_job", "get_job"):
        for row in results[rpc]:
            print(f"{rpc:<10}{row['concurrency']:>8}{row['throughput_rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}")
    delay = results["start_delay"]
    print(f"queued -> claimed (job.started): p50 {delay['queued_to_claimed_ms_p50']:.1f} ms; "
          f"queued -> first worker event: p50 {delay['queued_to_first_worker_event_s_p50']:.2f} s, "
          f"max {delay['queued_to_first_worker_event_s_max']:.2f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
