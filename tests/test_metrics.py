"""Prometheus exposition: promtool-clean, scraped by a real Prometheus, bounded label sets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import RunningServer, free_port, start_server, wait_for_state

ROW = {"messages": [{"role": "user", "content": "Itchy rash on both shins."}, {"role": "assistant", "content": "dermatology"}]}
FAR_FUTURE = time.time() + 300 * 86400


def _scrape(server: RunningServer) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
        return response.read().decode()


def _series(exposition: str) -> set[str]:
    return {line.split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}


def _dataset(server: RunningServer, tmp_path: Path) -> str:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(ROW) for _ in range(8)) + "\n")
    with server.client() as client:
        return client.upload_dataset(path).id


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: `make install` installs the Debian package prometheus"
    return path


def test_promtool_finds_nothing_wrong(server: RunningServer, tmp_path: Path) -> None:
    dataset = _dataset(server, tmp_path)
    with server.client() as client:
        job = client.create_job(dataset, "tiny-llama", {"max_steps": 1}, not_before=FAR_FUTURE)
        client.cancel_job(job.id)
        client.list_jobs()
    exposition = _scrape(server)
    for name in ("tunevault_jobs", "tunevault_jobs_finished_total", "tunevault_build_info",
                 "grpc_server_handled_total", "grpc_server_handling_seconds_bucket"):
        assert f"\n{name}" in exposition or f"\n{name}{{" in exposition, name
    result = subprocess.run([_promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result


def test_label_sets_do_not_grow_with_finished_jobs(tmp_path: Path, tiny_models_dir: Path) -> None:
    server = start_server(tmp_path / "data", tiny_models_dir, "--rate-limit", "100000", "--max-pending-jobs", "1000")
    try:
        _check_bounded_labels(server, tmp_path)
    finally:
        server.stop()


def _check_bounded_labels(server: RunningServer, tmp_path: Path) -> None:
    dataset = _dataset(server, tmp_path)
    with server.client() as client:
        def run_jobs(count: int) -> None:
            for _ in range(count):
                job = client.create_job(dataset, "tiny-llama", {"max_steps": 1}, not_before=FAR_FUTURE)
                client.get_job(job.id)
                client.cancel_job(job.id)
        run_jobs(10)
        after_ten = _series(_scrape(server))
        run_jobs(90)
        after_hundred = _series(_scrape(server))
        assert client.get_status().jobs_by_state["CANCELLED"] == 100
    assert after_hundred == after_ten
    assert not any(re.search(r"job_[0-9a-z]{20}", series) for series in after_hundred)


def _prometheus_config(folder: Path, target: str) -> Path:
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tunevault\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    return config


def _query(port: int, expression: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.load(response)["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


def _wait_query(port: int, expression: str, predicate, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = _query(port, expression)
        if value is not None and predicate(value):
            return value
        time.sleep(1)
    raise AssertionError(f"{expression} never satisfied the check; last value {value}")


def test_a_real_prometheus_sees_tokens_and_finished_jobs_increase(server: RunningServer, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus missing: `make install` installs the Debian package prometheus"
    port = free_port()
    config = _prometheus_config(tmp_path, server.metrics_address)
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    try:
        _wait_query(port, 'up{job="tunevault"}', lambda v: v == 1)
        tokens_before = _wait_query(port, "tunevault_trained_tokens_total", lambda v: v >= 0)
        dataset = _dataset(server, tmp_path)
        with server.client() as client:
            job = client.create_job(dataset, "tiny-llama", {"max_steps": 3, "eval_accuracy_max_examples": 0})
            done = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"}, timeout=600)
        assert done.result.metrics, server.log()
        _wait_query(port, "tunevault_trained_tokens_total", lambda v: v > tokens_before)
        _wait_query(port, 'tunevault_jobs_finished_total{outcome="succeeded"}', lambda v: v >= 1)
    finally:
        process.terminate()
        process.wait(30)
