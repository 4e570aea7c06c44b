"""Prometheus metrics of the sinks (``lupita_sink_<thing>_<unit>``)."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from prometheus_client import Counter, Histogram

from stream_processor.stores.retry import RetryPolicy, SinkRejected, SinkUnavailable, retry_call

T = TypeVar("T")

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


def measured_retry(
    fn: Callable[[], T],
    *,
    store: str,
    operation: str,
    call_id: str | None,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    stop: threading.Event | None,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """:func:`~.retry.retry_call` with the sink metrics: retries counted, every operation's
    outcome (ok, unavailable, rejected, error) and time recorded."""

    def retried(attempt: int, delay: float, exc: BaseException) -> None:
        RETRIES.labels(store, operation).inc()
        if on_retry is not None:
            on_retry(attempt, delay, exc)

    started = time.monotonic()
    outcome = "ok"
    try:
        return retry_call(fn, policy=policy, is_transient=is_transient, store=store, operation=operation,
                          call_id=call_id, on_retry=retried, stop=stop)
    except SinkUnavailable:
        outcome = "unavailable"
        raise
    except SinkRejected:
        outcome = "rejected"
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        WRITES.labels(store, operation, outcome).inc()
        WRITE_SECONDS.labels(store, operation).observe(time.monotonic() - started)
