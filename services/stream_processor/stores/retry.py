"""Bounded retries with exponential backoff and jitter, for transient store errors only.

A sink call is wrapped in :func:`retry_call` with a :class:`RetryPolicy` and a classifier
(``is_transient(exc) -> bool``, one per store, in the store's sink module):

- a transient error (server down, connection reset, timeout, 5xx, deadlock) is retried after
  ``initial * multiplier ** (attempt - 1)`` seconds (capped at ``max_delay``), with jitter, until
  ``max_attempts`` attempts were made or the next wait would pass ``max_elapsed``; then
  :class:`SinkUnavailable` is raised, naming the store, the operation, the attempts and the last
  error. Nothing waits forever: the worker can put the call back and go on with other calls.
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
from dataclasses import dataclass
from typing import Callable, TypeVar

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


@dataclass(frozen=True)
class RetryPolicy:
    """How long a transient failure is retried.

    ``jitter`` is the random fraction of each wait: 0 = exactly the exponential value, 1 = "full
    jitter" (uniform between 0 and that value); the default 0.5 waits between half and all of it,
    so workers that lost the same store do not come back in lock-step.
    """

    max_attempts: int = 6
    max_elapsed_s: float = 30.0
    initial_delay_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_elapsed_s < 0 or self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("max_elapsed_s, initial_delay_s and max_delay_s must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, attempt: int) -> float:
        """The wait before attempt ``attempt + 1``, without jitter."""
        return min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (attempt - 1))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before attempt ``attempt + 1``, with jitter (within [(1-jitter)*b, b])."""
        base = self.backoff(attempt)
        r = (rng or random).random()
        return base * (1.0 - self.jitter) + base * self.jitter * r


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
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Run ``fn()``; retry transient failures per ``policy``; see the module docstring.

    ``on_retry(attempt, delay, error)`` is called before each wait (metrics, tests). With a
    ``stop`` event the waits end early when it is set, raising :class:`Stopped`.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except SinkRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - classified right below
            if not is_transient(exc):
                raise SinkRejected(
                    f"{store} {operation}: permanent error, not retried: {describe(exc)}",
                    store=store,
                    operation=operation,
                ) from exc
            elapsed = clock() - start
            if attempt >= policy.max_attempts:
                raise SinkUnavailable(
                    store=store, operation=operation, attempts=attempt, elapsed_s=elapsed,
                    last_error=exc, reason=f"max {policy.max_attempts} attempts",
                ) from exc
            delay = policy.delay(attempt, rng)
            if elapsed + delay > policy.max_elapsed_s:
                raise SinkUnavailable(
                    store=store, operation=operation, attempts=attempt, elapsed_s=elapsed,
                    last_error=exc, reason=f"max {policy.max_elapsed_s:g} s elapsed",
                ) from exc
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
            if stop is not None:
                if stop.wait(delay):
                    raise Stopped(
                        f"{store} {operation}: stopped while waiting to retry", store=store, operation=operation
                    ) from exc
            else:
                sleep(delay)
