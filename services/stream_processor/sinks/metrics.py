"""Prometheus metrics of the sinks (``lupita_sink_<thing>_<unit>``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WRITES = Counter(
    "lupita_sink_writes_total",
    "Sink operations by store (postgres, weaviate), operation and outcome (ok, unavailable, rejected)",
    ["store", "operation", "outcome"],
)
RETRIES = Counter(
    "lupita_sink_retries_total",
    "Transient sink failures that were retried after a backoff",
    ["store", "operation"],
)
WRITE_SECONDS = Histogram(
    "lupita_sink_write_seconds",
    "Time of one sink operation including its retries",
    ["store", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
