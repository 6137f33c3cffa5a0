"""Prometheus registry and exposition of the appliance (its own HTTP port)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from tunevault.server.store import Store


class StoreCollector(Collector):
    """Reads job counts from the store at scrape time, so the gauge can never drift."""

    def __init__(self, store: Store, version: str) -> None:
        self.store = store
        self.version = version

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("tunevault_jobs", "Jobs in the store by state.", labels=["state"])
        for state, count in self.store.count_jobs_by_state().items():
            jobs.add_metric([state.value.lower()], count)
        yield jobs
        build = InfoMetricFamily("tunevault_build", "Version of the running appliance.")
        build.add_metric([], {"version": self.version})
        yield build


def serve_metrics(listen: str, store: Store, version: str) -> tuple[CollectorRegistry, object]:
    """Starts the /metrics HTTP endpoint on `listen` (HOST:PORT); returns the registry and server."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, version))
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return registry, server
