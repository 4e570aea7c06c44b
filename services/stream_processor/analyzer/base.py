"""The analyzer interface, its errors, input checks, the cloud retry policy and the fallback wrapper.

Plain synchronous code, no Kafka: the Faust agent (on call end), ``lupita replay`` and the
benchmarks call the same objects::

    analysis = analyzer.analyze(call_id, utterances)   # -> understanding.CallAnalysis

``utterances`` are the call's final transcript segments of both legs (any order; they are sorted
by start time). Bad input raises :class:`AnalyzerInputError` saying what is wrong; every other
failure of a cloud backend is an :class:`AnalyzerBackendError` that :class:`FallbackAnalyzer`
turns into a local analysis with ``analyzer="<cloud>->local"`` and the reason in ``notes``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence, TypeVar

from stream_processor.understanding import CallAnalysis, Utterance

log = logging.getLogger("stream_processor.analyzer")

LEGS = ("lupita", "person")


# --- errors ------------------------------------------------------------------------------------


class AnalyzerError(RuntimeError):
    """Base class of every analyzer error."""


class AnalyzerInputError(AnalyzerError, ValueError):
    """The utterances handed to ``analyze`` cannot be analysed as they are (the message says why)."""


class AnalyzerBackendError(AnalyzerError):
    """A cloud backend failed. ``retryable`` tells whether trying again may help."""

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

    @property
    def reason(self) -> str:
        """One line for ``CallAnalysis.notes``: what failed, and after how many attempts."""
        text = str(self)
        return text + (f" (after {self.attempts} attempts)" if self.attempts > 1 else "")


class AnalyzerAuthError(AnalyzerBackendError):
    """The backend refused the credentials (401/403): never retried; fix the API key setting."""


class AnalyzerMalformedResponse(AnalyzerBackendError):
    """The backend answered 2xx with a body that is not the documented JSON."""


class AnalyzerRefused(AnalyzerBackendError):
    """The model answered without the forced tool call (a refusal, or text only)."""


class AnalyzerOutputInvalid(AnalyzerBackendError):
    """The model's tool input does not match the CallAnalysis schema (or cites utterances that do
    not exist); never used."""


# --- interface ---------------------------------------------------------------------------------


class Analyzer(ABC):
    """Utterances of one finished call -> :class:`CallAnalysis`. Thread-safe."""

    #: backend name put in ``CallAnalysis.analyzer``
    name: str = "?"

    @abstractmethod
    def analyze(self, call_id: str, utterances: Sequence[Utterance]) -> CallAnalysis:
        """Topics, primary emotion and trend, behavioral codes, user facts and a short summary."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""


def prepare_utterances(call_id: str, utterances: Sequence[Utterance]) -> list[Utterance]:
    """Check the input and return it sorted by (start, leg, seq).

    A ``confidence`` of None (the ASR backend gave none) is accepted and counts as 1.0.
    Refused with :class:`AnalyzerInputError`: an empty call id, something that is not an
    :class:`Utterance`, an utterance of another call, an unknown leg, a negative sequence
    number, non-finite or negative times, an end before its start, text that is not a string,
    and two different utterances with the same (leg, seq). An exact duplicate (a redelivered
    segment) is kept once.
    """
    if not isinstance(call_id, str) or not call_id.strip():
        raise AnalyzerInputError(f"call_id must be a non-empty string, got {call_id!r}")
    if isinstance(utterances, (str, bytes)) or not isinstance(utterances, Sequence):
        raise AnalyzerInputError(f"utterances must be a list of Utterance, got {type(utterances).__name__}")
    seen: dict[tuple[str, int], Utterance] = {}
    for i, u in enumerate(utterances):
        where = f"utterances[{i}]"
        if not isinstance(u, Utterance):
            raise AnalyzerInputError(f"{where} is a {type(u).__name__}, not an Utterance")
        if u.call_id != call_id:
            raise AnalyzerInputError(f"{where} belongs to call {u.call_id!r}, not {call_id!r}")
        if u.leg not in LEGS:
            raise AnalyzerInputError(f"{where} has leg {u.leg!r}; expected one of {', '.join(LEGS)}")
        if isinstance(u.seq, bool) or not isinstance(u.seq, int) or u.seq < 0:
            raise AnalyzerInputError(f"{where} has seq {u.seq!r}; expected an integer >= 0")
        for name in ("start_s", "end_s", "confidence"):
            value = getattr(u, name)
            if name == "confidence" and value is None:
                continue  # not given by the ASR backend: counts as 1.0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AnalyzerInputError(f"{where}.{name} is {value!r}; expected a finite number")
        if u.start_s < 0 or u.end_s < u.start_s:
            raise AnalyzerInputError(f"{where} spans {u.start_s}..{u.end_s} s; expected 0 <= start_s <= end_s")
        if u.confidence is not None and not 0.0 <= u.confidence <= 1.0:
            raise AnalyzerInputError(f"{where}.confidence is {u.confidence}; expected a value in [0, 1]")
        if not isinstance(u.text, str):
            raise AnalyzerInputError(f"{where}.text is a {type(u.text).__name__}, not a string")
        key = (u.leg, u.seq)
        if key in seen:
            if seen[key] != u:
                raise AnalyzerInputError(f"{where} repeats {u.leg} seq {u.seq} with different content; "
                                         "a call's segments must have unique (leg, seq)")
            continue
        seen[key] = u
    return sorted(seen.values(), key=lambda u: (u.start_s, u.leg != "lupita", u.seq))


# --- retries (cloud backends) ------------------------------------------------------------------

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """Retry with exponential backoff and jitter for 429 / 5xx / 529 / timeouts / connection errors.

    A ``Retry-After`` from the server is honoured as the wait; one longer than
    ``max_retry_after_s`` is not waited for: the error is raised at once (the fallback answers).
    """

    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 10.0
    max_retry_after_s: float = 30.0
    jitter: float = 0.2  # +- fraction of the computed backoff
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def backoff(self, attempt: int) -> float:
        base = min(self.max_delay_s, self.base_delay_s * (2.0 ** (attempt - 1)))
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))

    def run(self, fn: Callable[[], T], *, backend: str, call_id: str) -> T:
        attempt = 1
        while True:
            try:
                return fn()
            except AnalyzerBackendError as exc:
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
                log.warning("analyzer backend error, retrying", extra={
                    "call_id": call_id, "stage": "analyzer", "backend": backend, "status": exc.status,
                    "error": type(exc).__name__, "attempt": attempt, "delay_s": round(delay, 3)})
                self.sleep(delay)
                attempt += 1


# --- fallback ----------------------------------------------------------------------------------


class FallbackAnalyzer(Analyzer):
    """Ask ``primary`` (a cloud backend); on ANY failure of it (HTTP error after retries, refused
    credentials, timeout, a body that is not JSON, no tool call, output that fails the schema, or
    an unexpected exception) answer with ``fallback`` (the local analyzer). The result then says
    ``analyzer="<primary>-><fallback>"`` and carries ``"fallback: <reason>"`` in its notes.

    Bad input is not a backend failure: :class:`AnalyzerInputError` is raised, not retried
    elsewhere. A call without utterances is analysed by the fallback directly (nothing to send).
    """

    def __init__(self, primary: Analyzer, fallback: Analyzer) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name

    def analyze(self, call_id: str, utterances: Sequence[Utterance]) -> CallAnalysis:
        utts = prepare_utterances(call_id, utterances)
        if not any(u.text.strip() for u in utts):
            result = self.fallback.analyze(call_id, utts)
            return replace(result, notes=result.notes + (f"{self.primary.name} not called: no transcript text",))
        try:
            return self.primary.analyze(call_id, utts)
        except AnalyzerInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the cloud path falls back
            if isinstance(exc, AnalyzerBackendError):
                reason, status = exc.reason, exc.status
            else:
                reason, status = f"{self.primary.name}: unexpected {type(exc).__name__}: {exc}", None
            level = logging.ERROR if isinstance(exc, AnalyzerAuthError) else logging.WARNING
            # The reason of a backend error is our own text (status, error type, schema places;
            # never transcript text); an unexpected exception is logged by its type only.
            log.log(level, "analyzer backend failed, using the fallback", extra={
                "call_id": call_id, "stage": "analyzer", "backend": self.primary.name,
                "fallback": self.fallback.name, "status": status, "error": type(exc).__name__,
                "reason": reason if isinstance(exc, AnalyzerBackendError) else None})
            result = self.fallback.analyze(call_id, utts)
            return replace(result, analyzer=f"{self.primary.name}->{self.fallback.name}",
                           notes=result.notes + (f"fallback: {reason}",))

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()
