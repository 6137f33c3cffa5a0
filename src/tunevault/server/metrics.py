"""Prometheus registry and exposition: what the appliance counts, and its /metrics endpoint.

Worker figures reach this registry through the parent (the scheduler reads the worker's
events and calls Metrics), never through prometheus multiprocess mode. Labels are bounded:
job state, outcome, worker slot, gRPC method and code; never a job id.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunevault.server.store import JobRecord, Store

# Jobs run for minutes to days; queue waits from milliseconds to a night.
JOB_SECONDS_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, float("inf"))
WAIT_SECONDS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 43200, float("inf"))
LOAD_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, float("inf"))
OUTCOMES = ("succeeded", "failed", "cancelled")
RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))


class StoreCollector(Collector):
    """Reads job counts from the store at scrape time, so the gauge never drifts from the truth."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("tunevault_jobs", "Jobs in the store by state.", labels=["state"])
        for state, count in self.store.count_jobs_by_state().items():
            jobs.add_metric([state.value.lower()], count)
        yield jobs


class GpuCollector(Collector):
    """tunevault_gpu_busy{gpu}: 1 while a job's worker holds the device, read from the store at scrape time."""

    def __init__(self, store: Store, gpus: tuple[int, ...]) -> None:
        self.store = store
        self.gpus = gpus

    def collect(self) -> Iterable[Metric]:
        busy = GaugeMetricFamily("tunevault_gpu_busy", "1 while a job's worker holds the GPU, else 0.", labels=["gpu"])
        held = self.store.held_devices() if self.gpus else {}
        for index in self.gpus:
            busy.add_metric([str(index)], 1 if index in held else 0)
        yield busy


class Metrics:
    """Every metric the appliance exports, on a registry of its own (no process-global state)."""

    def __init__(self, store: Store, version: str, gpus: tuple[int, ...] = ()) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))
        self.registry.register(GpuCollector(store, gpus))
        r = self.registry
        self.build_info = Gauge("tunevault_build_info", "Version of the running appliance (value 1).",
                                ["version", "python"], registry=r)
        self.build_info.labels(version=version, python=platform.python_version()).set(1)
        self.jobs_finished = Counter("tunevault_jobs_finished_total", "Jobs that reached a terminal state.",
                                     ["outcome"], registry=r)
        self.job_duration = Histogram("tunevault_job_duration_seconds", "From first start to terminal state.",
                                      ["outcome"], buckets=JOB_SECONDS_BUCKETS, registry=r)
        for outcome in OUTCOMES:  # every series exists from the start, so rate() sees the first job
            self.jobs_finished.labels(outcome=outcome)
            self.job_duration.labels(outcome=outcome)
        self.queue_wait = Histogram("tunevault_job_queue_wait_seconds", "From queued to a worker starting.",
                                    buckets=WAIT_SECONDS_BUCKETS, registry=r)
        self.trained_tokens = Counter("tunevault_trained_tokens_total", "Non-padding tokens trained on.", registry=r)
        self.tokens_per_second = Gauge("tunevault_training_tokens_per_second", "Throughput of the job in a worker slot.",
                                       ["slot"], registry=r)
        self.step = Gauge("tunevault_training_step", "Optimizer step of the job in a worker slot.", ["slot"], registry=r)
        self.loss = Gauge("tunevault_training_loss", "Last training loss of the job in a worker slot.", ["slot"], registry=r)
        self.eval_loss = Gauge("tunevault_training_eval_loss", "Last eval loss of the job in a worker slot.",
                               ["slot"], registry=r)
        self.worker_memory = Gauge("tunevault_worker_memory_bytes", "Memory used by the worker in a slot.",
                                   ["slot", "kind"], registry=r)
        self.model_load = Histogram("tunevault_model_load_seconds", "Time a worker took to load its base model.",
                                    buckets=LOAD_SECONDS_BUCKETS, registry=r)
        self.checkpoint_save = Histogram("tunevault_checkpoint_save_seconds", "Time a worker took to save a checkpoint.",
                                         buckets=LOAD_SECONDS_BUCKETS, registry=r)
        self.rpc_started = Counter("grpc_server_started_total", "RPCs started on the server.",
                                   ["grpc_type", "grpc_service", "grpc_method"], registry=r)
        self.rpc_handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                                   ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.rpc_seconds = Histogram("grpc_server_handling_seconds", "Time to complete an RPC on the server.",
                                     ["grpc_type", "grpc_service", "grpc_method"], buckets=RPC_SECONDS_BUCKETS, registry=r)

    # Called by the scheduler ------------------------------------------------------------

    def job_started(self, job: JobRecord, slot: int) -> None:
        if job.queued_at is not None:
            self.queue_wait.observe(max(0.0, time.time() - job.queued_at))
        for gauge in (self.step, self.loss, self.eval_loss, self.tokens_per_second):
            gauge.labels(slot=str(slot)).set(0)

    def worker_event(self, slot: int, event_type: str, figures: dict[str, float], new_tokens: int) -> None:
        label = str(slot)
        if new_tokens > 0:
            self.trained_tokens.inc(new_tokens)
        if event_type == "step":
            for key, gauge in (("step", self.step), ("loss", self.loss), ("tokens_per_second", self.tokens_per_second)):
                if key in figures:
                    gauge.labels(slot=label).set(figures[key])
        elif event_type == "eval" and "eval_loss" in figures:
            self.eval_loss.labels(slot=label).set(figures["eval_loss"])
        elif event_type == "model.loaded" and "load_seconds" in figures:
            self.model_load.observe(figures["load_seconds"])
        elif event_type == "checkpoint" and "save_seconds" in figures:
            self.checkpoint_save.observe(figures["save_seconds"])
        if "gpu_memory_bytes" in figures:
            self.worker_memory.labels(slot=label, kind="gpu").set(figures["gpu_memory_bytes"])

    def worker_rss(self, slot: int, rss_bytes: int) -> None:
        self.worker_memory.labels(slot=str(slot), kind="rss").set(rss_bytes)

    def worker_stopped(self, slot: int) -> None:
        self.tokens_per_second.labels(slot=str(slot)).set(0)
        self.worker_memory.labels(slot=str(slot), kind="rss").set(0)

    def job_finished(self, job: JobRecord) -> None:
        if not job.state.terminal:
            return
        outcome = job.state.value.lower()
        self.jobs_finished.labels(outcome=outcome).inc()
        if job.started_at is not None and job.finished_at is not None:
            self.job_duration.labels(outcome=outcome).observe(max(0.0, job.finished_at - job.started_at))


def serve_metrics(listen: str, registry: CollectorRegistry) -> object:
    """Starts the /metrics HTTP endpoint on `listen` (HOST:PORT); returns the HTTP server."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server

