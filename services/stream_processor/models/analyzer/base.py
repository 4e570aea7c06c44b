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
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from stream_processor.models import cloud
from stream_processor.models.cloud import BackendError, is_retryable_status  # noqa: F401
from stream_processor.contracts import CallAnalysis, Utterance

log = logging.getLogger("stream_processor.models.analyzer")

LEGS = ("lupita", "person")


# --- errors ------------------------------------------------------------------------------------


class AnalyzerError(RuntimeError):
    """Base class of every analyzer error."""


class AnalyzerInputError(AnalyzerError, ValueError):
    """The utterances handed to ``analyze`` cannot be analysed as they are (the message says why)."""


class AnalyzerBackendError(AnalyzerError, BackendError):
    """A cloud backend failed. ``retryable`` tells whether trying again may help."""

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
    def analyze(self, call_id: str, utterances: Sequence[Utterance], *,
                words: Mapping[tuple[str, int], Sequence[tuple[str, float | None]]] | None = None) -> CallAnalysis:
        """Topics, primary emotion and trend, behavioral codes, user facts and a short summary.

        ``words``: the transcript words of each utterance with their recognition probabilities
        (``TranscriptEvent.words``), by ``(leg, seq)``; a fact's confidence follows the
        probabilities of the words it came from. Without them the utterance's confidence counts."""

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

@dataclass(frozen=True, kw_only=True)
class RetryPolicy(cloud.RetryPolicy):
    """:class:`stream_processor.models.cloud.RetryPolicy` with the analyzer's defaults (3 attempts,
    1 s doubling up to 10 s), logging as the analyzer's."""

    max_attempts: int | None = 3
    initial_delay_s: float = 1.0
    max_delay_s: float = 10.0
    label: str = "analyzer"
    stage: str = "analyzer"


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

    def analyze(self, call_id: str, utterances: Sequence[Utterance], *,
                words: Mapping[tuple[str, int], Sequence[tuple[str, float | None]]] | None = None) -> CallAnalysis:
        utts = prepare_utterances(call_id, utterances)
        if not any(u.text.strip() for u in utts):
            result = self.fallback.analyze(call_id, utts, words=words)
            return replace(result, notes=result.notes + (f"{self.primary.name} not called: no transcript text",))
        try:
            return self.primary.analyze(call_id, utts, words=words)
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
            result = self.fallback.analyze(call_id, utts, words=words)
            return replace(result, analyzer=f"{self.primary.name}->{self.fallback.name}",
                           notes=result.notes + (f"fallback: {reason}",))

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()
