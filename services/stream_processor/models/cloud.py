"""What every cloud model backend shares (OpenAI, Deepgram, Anthropic): the backend error with
its retry facts, one retry policy (exponential backoff with jitter, ``Retry-After`` honoured up to
a limit), and the HTTP helpers that read those facts. The transcriber, embedder and analyzer
each derive their own error classes from :class:`BackendError` and their policy defaults from
:class:`RetryPolicy`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# 529: Anthropic's "overloaded"; any other 5xx is retryable too
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class BackendError(RuntimeError):
    """A cloud backend failed. ``retryable`` tells whether trying again may help; ``attempts``
    how many tries were made (set by :class:`RetryPolicy`)."""

    def __init__(self, backend: str, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None) -> None:
        self.backend = backend
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = 1
        self.detail = message
        where = backend + (f" HTTP {status}" if status is not None else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry with exponential backoff and jitter for 429 / 5xx / timeouts / connection errors.

    A ``Retry-After`` (or ``retry-after-ms``) from the server is honoured as the wait; one longer
    than ``max_retry_after_s`` is not waited for: the error is raised at once with that said in
    its message (a fallback, or the agent's own redelivery, takes over).
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 30.0
    jitter: float = 0.2  # +- fraction of the computed backoff
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    label: str = "cloud"  # in the log message: "<label> backend error, retrying"
    stage: str = "cloud"  # the log record's stage

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (from 1) when the server gave no Retry-After."""
        base = min(self.max_delay_s, self.base_delay_s * (2.0 ** (attempt - 1)))
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))

    def run(self, fn: Callable[[], T], *, backend: str, call_id: str | None = None) -> T:
        attempt = 1
        while True:
            try:
                return fn()
            except BackendError as exc:
                exc.attempts = attempt
                if not exc.retryable or attempt >= self.max_attempts:
                    raise
                if exc.retry_after_s is not None:
                    if exc.retry_after_s > self.max_retry_after_s:
                        exc.args = (f"{exc.args[0]}; Retry-After {exc.retry_after_s:g} s exceeds the "
                                    f"{self.max_retry_after_s:g} s limit",)
                        raise
                    delay = max(0.0, exc.retry_after_s)
                else:
                    delay = self.backoff(attempt)
                extra = {"stage": self.stage, "backend": backend, "status": exc.status,
                         "error": type(exc).__name__, "attempt": attempt, "delay_s": round(delay, 3)}
                if call_id is not None:
                    extra["call_id"] = call_id
                log.warning(f"{self.label} backend error, retrying", extra=extra)
                self.sleep(delay)
                attempt += 1


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


def error_summary(body: object, limit: int = 200) -> str:
    """A short, single-line excerpt of an error body for messages (never headers: they hold keys)."""
    text = body if isinstance(body, str) else repr(body)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
