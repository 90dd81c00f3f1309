"""Prometheus metrics of a worker node (`ftqueue worker --metrics-port P`).

Cluster-wide counts (tasks by final state and error type, retries by cause, expired leases,
fenced late results, queue depths, DELAYED tasks, running tasks) are read from Redis at
scrape time, so every node reports the same totals; the task duration histogram is this
node's own.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800)


class ClusterCollector:
    def __init__(self, reader: Any, node: Any) -> None:
        self.reader = reader
        self.node = node

    def collect(self) -> Iterator[Any]:
        stats = self.reader.stats()
        tasks = CounterMetricFamily("ftqueue_tasks", "Tasks that reached a final state",
                                    labels=["state", "error_type"])
        retries = CounterMetricFamily("ftqueue_retries", "Attempts retried, by cause",
                                      labels=["cause"])
        for key, value in stats.items():
            if key.startswith("tasks:"):
                _, state, *rest = key.split(":")
                tasks.add_metric([state, rest[0] if rest else ""], value)
            elif key.startswith("retries:"):
                retries.add_metric([key.split(":", 1)[1]], value)
        yield tasks
        yield retries
        yield CounterMetricFamily("ftqueue_leases_expired", "Leases the reaper found expired",
                                  value=stats.get("leases_expired", 0))
        yield CounterMetricFamily("ftqueue_fenced_results", "Late results discarded by fencing",
                                  value=stats.get("fenced", 0))
        depth = GaugeMetricFamily("ftqueue_queue_depth", "Tasks waiting in a queue",
                                  labels=["queue"])
        for name, n in self.reader.queue_depths().items():
            depth.add_metric([name], n)
        yield depth
        delayed = GaugeMetricFamily("ftqueue_delayed_tasks", "DELAYED tasks of a queue",
                                    labels=["queue"])
        for name, n in self.reader.delayed_counts().items():
            delayed.add_metric([name], n)
        yield delayed
        yield GaugeMetricFamily("ftqueue_running_tasks", "Tasks holding a lease (cluster)",
                                value=self.reader.running())
        # A snapshot the supervisor's own thread publishes: its worker table is not ours
        # to iterate from this (the HTTP server's) thread.
        workers, running = self.node.view
        yield GaugeMetricFamily("ftqueue_node_workers", "Worker processes of this node",
                                value=workers)
        yield GaugeMetricFamily("ftqueue_node_running_tasks", "Tasks running on this node",
                                value=running)


class NodeMetrics:
    def __init__(self, supervisor: Any, port: int, addr: str = "0.0.0.0") -> None:
        from .state import StateReader

        self.registry = CollectorRegistry()
        self.duration = Histogram("ftqueue_task_duration_seconds",
                                  "Run time of task attempts on this node",
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(ClusterCollector(StateReader(supervisor.store), supervisor))
        start_http_server(port, addr=addr, registry=self.registry)

    def task_ended(self, seconds: float) -> None:
        self.duration.observe(seconds)
