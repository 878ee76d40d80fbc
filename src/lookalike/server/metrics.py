"""Prometheus metrics: request counts and latencies per route, search step timings, collection sizes
and the index-job queue. Each app has its own registry, so several apps (tests) can live in one process.

Several processes on one library (`uvicorn --workers N`, or more than one `lookalike serve`): start them
with PROMETHEUS_MULTIPROC_DIR naming one empty folder, and every process's /metrics answers the totals of
all of them (prometheus_client's multiprocess mode). Collection sizes and the job queue are read from the
library at scrape time, so they are the same from every process anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StateCollector(Collector):
    """Values read at scrape time: images and bytes per collection, jobs queued and running."""

    def __init__(self, collections: Callable[[], list[Any]], jobs: Any) -> None:
        self._collections = collections
        self._jobs = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        images = GaugeMetricFamily("lookalike_collection_images", "Images in a collection", labels=["collection"])
        size = GaugeMetricFamily("lookalike_collection_bytes", "Vector and index bytes of a collection",
                                 labels=["collection"])
        try:
            for info in self._collections():
                images.add_metric([info.name], info.count)
                size.add_metric([info.name], info.size_bytes)
        except Exception:  # noqa: BLE001 - a scrape must never fail because the library is closing
            pass
        yield images
        yield size
        yield GaugeMetricFamily("lookalike_index_queue_depth", "Index jobs waiting to run", value=self._jobs.queued)
        yield GaugeMetricFamily("lookalike_index_jobs_running", "Index jobs running", value=self._jobs.running)


class Metrics:
    def __init__(self, collections: Callable[[], list[Any]], jobs: Any) -> None:
        self.registry = CollectorRegistry()
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        # multiprocess mode: values live in files shared by the processes, and a scrape reads them all
        own = None if shared else self.registry
        self.requests = Counter("lookalike_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=own)
        self.latency = Histogram("lookalike_http_request_duration_seconds", "HTTP request latency by route",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=own)
        self.search_steps = Histogram("lookalike_search_step_seconds",
                                      "Time per search step (decode, embed+nearest)", ["step"],
                                      buckets=LATENCY_BUCKETS, registry=own)
        if shared:
            Path(shared).mkdir(parents=True, exist_ok=True)
            MultiProcessCollector(self.registry, path=shared)
        self.in_flight = 0
        self.registry.register(_StateCollector(collections, jobs))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
