"""Bounded retries of store writes: the sink errors, and :func:`retry_call`.

A sink call is wrapped in :func:`retry_call` with a :class:`RetryPolicy` (the one policy of the
stream processor, :class:`stream_processor.retry.RetryPolicy`; re-exported here) and a classifier
(``is_transient(exc) -> bool``, one per store, in the store's sink module):

- a transient error (server down, connection reset, timeout, 5xx, deadlock) is retried after
  ``initial_delay_s * multiplier ** (attempt - 1)`` seconds (capped at ``max_delay_s``), with
  jitter, until ``max_attempts`` attempts were made or the next wait would pass
  ``max_elapsed_s``; then :class:`SinkUnavailable` is raised, naming the store, the operation,
  the attempts and the last error. Nothing waits forever: the worker can put the call back and
  go on with other calls.
- a permanent error (constraint violation, invalid input, 4xx) is not retried: it is raised at
  once as :class:`SinkRejected` (the original exception is its ``__cause__``), so the caller can
  dead-letter the record instead of retrying it for ever.

Pure Python, no store imports: the clock, the sleep and the random source can be injected.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

from stream_processor.retry import GiveUp, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


class SinkError(RuntimeError):
    """A sink could not store something. ``store``: "postgres" | "weaviate"."""

    def __init__(self, message: str, *, store: str, operation: str) -> None:
        super().__init__(message)
        self.store = store
        self.operation = operation


class SinkUnavailable(SinkError):
    """The store stayed unreachable (transient errors only) for the whole retry budget.

    The write may be retried later in full (every sink write is idempotent)."""

    def __init__(
        self,
        *,
        store: str,
        operation: str,
        attempts: int,
        elapsed_s: float,
        last_error: BaseException,
        reason: str,
    ) -> None:
        super().__init__(
            f"{store} {operation}: still failing after {attempts} attempt(s) over {elapsed_s:.1f} s "
            f"({reason}); last error: {describe(last_error)}",
            store=store,
            operation=operation,
        )
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last_error = last_error


class SinkRejected(SinkError):
    """The store refused the write for a reason a retry cannot fix (bad data, schema, 4xx)."""


class InvalidSinkInput(SinkRejected, ValueError):
    """The data handed to a sink is malformed; nothing was written."""

    def __init__(self, message: str, *, store: str, operation: str) -> None:
        super().__init__(message, store=store, operation=operation)


class Stopped(SinkError):
    """The stop event was set while waiting for the next attempt (worker shutting down)."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (bounded; for logs and error messages)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_call(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    store: str,
    operation: str,
    call_id: str | None = None,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Run ``fn()``; retry transient failures per ``policy`` (:meth:`RetryPolicy.call`); see the
    module docstring.

    ``on_retry(attempt, delay, error)`` is called before each wait (metrics, tests). The waits
    use ``sleep`` (default: the policy's ``sleep``); with a ``stop`` event they end early when it
    is set, raising :class:`Stopped`.
    """
    def attempt() -> T:
        try:
            return fn()
        except SinkRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - classified right here
            if is_transient(exc):
                raise
            raise SinkRejected(
                f"{store} {operation}: permanent error, not retried: {describe(exc)}",
                store=store,
                operation=operation,
            ) from exc

    def retrying(attempt: int, delay: float, exc: Exception) -> None:
        log.warning(
            "sink write failed, retrying",
            extra={
                "stage": "sink",
                "call_id": call_id,
                "store": store,
                "operation": operation,
                "attempt": attempt,
                "retry_in_s": round(delay, 3),
                "error": describe(exc),
            },
        )
        if on_retry is not None:
            on_retry(attempt, delay, exc)

    def giving_up(exc: Exception, why: GiveUp) -> SinkError:
        if why.kind == "stopped":
            return Stopped(f"{store} {operation}: {why.reason}", store=store, operation=operation)
        return SinkUnavailable(store=store, operation=operation, attempts=why.attempts, elapsed_s=why.elapsed_s,
                               last_error=exc, reason=why.reason)

    return policy.call(attempt, retryable=lambda exc: not isinstance(exc, SinkRejected), on_retry=retrying,
                       give_up=giving_up, stop=stop, sleep=sleep, clock=clock, rng=rng)
