"""The one retry vocabulary of the stream processor: how long to wait after a failed attempt at a
remote service, and when to stop trying.

:class:`RetryPolicy` is used by everything that calls out of the process:

- the stores (Postgres, Weaviate): :func:`stream_processor.stores.retry.retry_call` runs a sink
  write under it (``stream_processor.stores.RetryPolicy`` is this very class, with its defaults);
- the cloud model backends (OpenAI, Deepgram, Anthropic): :class:`stream_processor.models.cloud.RetryPolicy`
  is this class with the cloud defaults and a ``run`` that retries their ``BackendError``;
- a stage's own "wait and try again" loop that must never give up: it asks
  :meth:`RetryPolicy.delay` for the wait after each failed round (any round number is fine; the
  wait stays at ``max_delay_s``) and ignores the budgets.

What a policy says:

- **backoff**: after failed attempt ``n`` (from 1) wait ``initial_delay_s * multiplier ** (n - 1)``
  seconds, never more than ``max_delay_s`` (:meth:`RetryPolicy.backoff`);
- **jitter**: the random fraction of that wait; the wait is uniform in ``[(1 - jitter) * b, b]``
  (0 = exactly ``b``, 1 = "full jitter"), so it never passes the cap and workers that lost the same
  service do not come back in lock-step (:meth:`RetryPolicy.delay`);
- **budgets**: at most ``max_attempts`` attempts, and no wait that would end more than
  ``max_elapsed_s`` seconds after the first attempt started (``None``: no such limit);
- **Retry-After**: when ``max_retry_after_s`` is set and a failure carries the server's
  ``Retry-After``, that wait is used as it is instead of the backoff (still within the elapsed
  budget); one longer than ``max_retry_after_s`` is not waited for: the loop gives up at once.
  With ``max_retry_after_s=None`` a Retry-After is not consulted.

:meth:`RetryPolicy.call` is the loop that applies all of it; what is retryable, what is logged
and what is raised at the end are the caller's (hooks). Pure Python: the clock, the sleep, the
random source and a stop event can be injected.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import InitVar, dataclass, field
from typing import Callable, Literal, TypeVar

T = TypeVar("T")

GiveUpKind = Literal["attempts", "elapsed", "retry_after", "stopped"]


@dataclass(frozen=True)
class GiveUp:
    """Why a retry loop stops before the next attempt.

    ``kind``: ``attempts`` (``max_attempts`` made), ``elapsed`` (the next wait would pass
    ``max_elapsed_s``), ``retry_after`` (the server asked for longer than ``max_retry_after_s``)
    or ``stopped`` (the stop event was set during a wait). ``reason`` says it in words, e.g.
    ``"max 4 attempts"``, ``"max 30 s elapsed"``, ``"Retry-After 120 s exceeds the 30 s limit"``.
    """

    kind: GiveUpKind
    reason: str
    attempts: int
    elapsed_s: float


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, an attempt and a time budget, and optional Retry-After
    honouring with a cap (see the module docstring). The defaults are the stores'.

    ``sleep`` is how :meth:`call` waits (tests pass ``list.append`` to record the waits).
    ``base_delay_s`` is accepted when constructing, as another name of ``initial_delay_s`` (the
    one the cloud backends' policy used); read ``initial_delay_s``.
    """

    max_attempts: int | None = 6
    max_elapsed_s: float | None = 30.0
    initial_delay_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_retry_after_s: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    base_delay_s: InitVar[float | None] = None

    def __post_init__(self, base_delay_s: float | None) -> None:
        if base_delay_s is not None:
            object.__setattr__(self, "initial_delay_s", base_delay_s)
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None: no limit)")
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("initial_delay_s and max_delay_s must be >= 0")
        for name in ("max_elapsed_s", "max_retry_after_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 (or None: no limit)")
        if not self.multiplier >= 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (from 1), without jitter:
        ``initial_delay_s * multiplier ** (attempt - 1)``, at most ``max_delay_s``."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        if self.initial_delay_s == 0:
            return 0.0
        try:
            grown = self.initial_delay_s * self.multiplier ** (attempt - 1)
        except OverflowError:  # an endless loop's thousandth round: long past the cap
            grown = math.inf
        return min(self.max_delay_s, grown)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt`` (from 1), with jitter: uniform in
        ``[(1 - jitter) * b, b]`` where ``b = backoff(attempt)``. Budgets are not consulted."""
        base = self.backoff(attempt)
        r = (rng or random).random()
        return base * (1.0 - self.jitter) + base * self.jitter * r

    def next_delay(self, attempt: int, *, elapsed_s: float = 0.0, retry_after_s: float | None = None,
                   rng: random.Random | None = None) -> float | GiveUp:
        """The wait before attempt ``attempt + 1`` after attempt ``attempt`` failed ``elapsed_s``
        seconds after the first one started, or :class:`GiveUp` when the budgets allow no other.

        ``retry_after_s`` is the server's Retry-After, if the failure carried one.
        """
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return GiveUp("attempts", f"max {self.max_attempts} attempts", attempt, elapsed_s)
        if retry_after_s is not None and self.max_retry_after_s is not None:
            if retry_after_s > self.max_retry_after_s:
                return GiveUp("retry_after", f"Retry-After {retry_after_s:g} s exceeds the "
                              f"{self.max_retry_after_s:g} s limit", attempt, elapsed_s)
            wait = max(0.0, retry_after_s)
        else:
            wait = self.delay(attempt, rng)
        if self.max_elapsed_s is not None and elapsed_s + wait > self.max_elapsed_s:
            return GiveUp("elapsed", f"max {self.max_elapsed_s:g} s elapsed", attempt, elapsed_s)
        return wait

    def call(
        self,
        fn: Callable[[], T],
        *,
        retryable: Callable[[Exception], bool],
        retry_after: Callable[[Exception], float | None] | None = None,
        on_retry: Callable[[int, float, Exception], None] | None = None,
        give_up: Callable[[Exception, GiveUp], BaseException | None] | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> T:
        """Run ``fn()`` and return what it returns; try again while its failures are retryable
        and the policy allows.

        - an exception for which ``retryable(exc)`` is false is raised as it is, at once;
        - a retryable one is followed by the wait :meth:`next_delay` gives (``retry_after(exc)``:
          the server's Retry-After it carries, if any); ``on_retry(attempt, wait, exc)`` is called
          before each wait (logs, metrics);
        - when the policy gives up, or ``stop`` is set during a wait, ``give_up(exc, why)`` says
          what to raise (chained to the last error); when it returns None, or there is no
          ``give_up``, the last error itself is raised.

        Waits use ``stop.wait`` when a stop event is given, else ``sleep`` (default: the
        policy's ``sleep``).
        """
        start = clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if not retryable(exc):
                    raise
                wait = self.next_delay(attempt, elapsed_s=clock() - start,
                                       retry_after_s=retry_after(exc) if retry_after is not None else None,
                                       rng=rng)
                if not isinstance(wait, GiveUp):
                    if on_retry is not None:
                        on_retry(attempt, wait, exc)
                    if stop is None:
                        (sleep or self.sleep)(wait)
                        continue
                    if not stop.wait(wait):
                        continue
                    wait = GiveUp("stopped", "stopped while waiting to retry", attempt, clock() - start)
                replacement = give_up(exc, wait) if give_up is not None else None
                if replacement is None:
                    raise
                raise replacement from exc
