"""A call's arrival state and its rules, shared by the recorder and vad stages (pure: no Kafka, no clocks of its own).

The Faust agent keeps one :class:`CallState` per call in the changelog-backed table
``recorder_calls`` (as the JSON dict of :meth:`CallState.to_dict`) and calls the functions
here; everything that decides *when* a call is finalised lives here so it is unit-tested
without a broker. Times are passed in (``now``: unix seconds of the worker's wall clock).

Life of a call::

    open --(ended + all chunks | ended + grace expired | idle timeout)--> finalizing
    open --(no started event within orphan_seconds)--> skipped (chunks dropped: no consent known)
    finalizing --(S3 and Postgres written)--> recorded | skipped
    finalizing --(failed, or the worker died)--> finalizing again after retry_seconds
    recorded/skipped --(state_retention)--> purged (redelivery before that is ignored;
                                           after it, the archive's idempotency still holds)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from pydantic import Field

from lupita.config import CommonSettings
from lupita.v1 import events_pb2

from stream_processor.records import LEG_NAMES
from stream_processor.retry import RetryPolicy

class CallTimelineSettings(CommonSettings):
    """How a call's chunks are placed on its timeline: shared by the recorder (the WAV) and the
    vad stage (the segments' call time), declared once (``LUPITA_<FIELD>``)."""

    # Longest call accepted (a bogus timestamp must not become hours of silence).
    recorder_max_call_seconds: float = Field(default=4 * 3600, gt=0)
    # Two chunks of a leg closer than this are treated as contiguous (capture jitter).
    recorder_align_tolerance_ms: float = Field(default=10.0, ge=0)


OPEN = "open"
FINALIZING = "finalizing"
RECORDED = "recorded"
SKIPPED = "skipped"
DONE = (RECORDED, SKIPPED)

# Why a call was finalised.
REASON_COMPLETE = "complete"  # ended and every announced chunk arrived
REASON_GRACE = "grace_expired"  # ended, chunks still missing after the grace period
REASON_TIMEOUT = "timeout"  # no ended event, no event at all for idle_call_timeout
REASON_NO_START = "no_started_event"  # chunks (or an end) but never a started event


# -- chunk sequence bookkeeping (sorted, disjoint, inclusive intervals) ------------------------------


def interval_add(intervals: list[list[int]], n: int) -> bool:
    """Insert ``n``; returns False if it was already present. Keeps intervals merged."""
    lo, hi = 0, len(intervals)
    while lo < hi:  # first interval whose start > n
        mid = (lo + hi) // 2
        if intervals[mid][0] > n:
            hi = mid
        else:
            lo = mid + 1
    i = lo
    if i > 0 and intervals[i - 1][0] <= n <= intervals[i - 1][1]:
        return False
    joins_left = i > 0 and intervals[i - 1][1] == n - 1
    joins_right = i < len(intervals) and intervals[i][0] == n + 1
    if joins_left and joins_right:
        intervals[i - 1][1] = intervals[i][1]
        del intervals[i]
    elif joins_left:
        intervals[i - 1][1] = n
    elif joins_right:
        intervals[i][0] = n
    else:
        intervals.insert(i, [n, n])
    return True


def interval_count(intervals: list[list[int]]) -> int:
    return sum(hi - lo + 1 for lo, hi in intervals)


def interval_members(intervals: list[list[int]]) -> list[int]:
    return [n for lo, hi in intervals for n in range(lo, hi + 1)]


def interval_missing(intervals: list[list[int]], expected: int) -> list[list[int]]:
    """Ranges of 0..expected-1 not covered, as inclusive [lo, hi] pairs."""
    out: list[list[int]] = []
    nxt = 0
    for lo, hi in intervals:
        if lo >= expected:
            break
        if lo > nxt:
            out.append([nxt, lo - 1])
        nxt = max(nxt, hi + 1)
    if nxt < expected:
        out.append([nxt, expected - 1])
    return out


# -- the state -------------------------------------------------------------------------------------


@dataclass
class CallState:
    call_id: str
    status: str = OPEN
    started: dict[str, Any] | None = None  # CallStarted as a JSON dict (protobuf field names)
    ended: dict[str, Any] | None = None  # CallEnded as a JSON dict
    received: dict[str, list[list[int]]] = field(default_factory=lambda: {"lupita": [], "person": []})
    first_seen: float = 0.0
    last_seen: float = 0.0
    ended_seen: float | None = None
    finalize_reason: str | None = None
    done_at: float | None = None
    outcome: dict[str, Any] | None = None
    duplicates: int = 0
    dropped_no_consent: int = 0
    partition: int | None = None  # source partition of the call (where its table keys live)
    finalize_started: float | None = None
    attempts: int = 0  # finalisation attempts that failed

    # -- (de)serialisation for the table ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    # -- typed views -----------------------------------------------------------------------------

    def started_msg(self) -> events_pb2.CallStarted | None:
        if self.started is None:
            return None
        return json_format.ParseDict(self.started, events_pb2.CallStarted())

    def ended_msg(self) -> events_pb2.CallEnded | None:
        if self.ended is None:
            return None
        return json_format.ParseDict(self.ended, events_pb2.CallEnded())

    @property
    def consent(self) -> bool | None:
        """True/False once the started event arrived, None before."""
        return None if self.started is None else bool(self.started.get("recording_consent", False))

    def expected_chunks(self) -> dict[str, int] | None:
        e = self.ended_msg()
        if e is None:
            return None
        return {"lupita": int(e.chunks_lupita), "person": int(e.chunks_person)}

    def missing(self) -> dict[str, list[list[int]]]:
        exp = self.expected_chunks() or {"lupita": 0, "person": 0}
        return {leg: interval_missing(self.received[leg], exp[leg]) for leg in exp}

    def is_complete(self) -> bool:
        """Ended, and every chunk 0..n-1 of both legs is here (or none is needed: no consent)."""
        if self.ended is None or self.started is None:
            return False
        if self.consent is False:
            return True
        return not any(self.missing().values())

    def chunk_seqs(self) -> dict[int, list[int]]:
        """Stored chunk sequence numbers per leg (enum value -> seqs)."""
        by_name = {v: k for k, v in LEG_NAMES.items()}
        return {by_name[name]: interval_members(iv) for name, iv in self.received.items()}


def new_state(call_id: str, now: float) -> CallState:
    return CallState(call_id=call_id, first_seen=now, last_seen=now)


def apply_started(state: CallState, started: events_pb2.CallStarted, now: float) -> bool:
    """Record the start (the first one wins). Returns True if the chunks stored so far must be
    dropped because the call has no recording consent."""
    state.last_seen = now
    if state.status != OPEN or state.started is not None:
        return False
    state.started = json_format.MessageToDict(started, preserving_proto_field_name=True)
    state.started.setdefault("recording_consent", started.recording_consent)
    return not started.recording_consent and any(state.received.values())


def apply_chunk(state: CallState, chunk: events_pb2.AudioChunk, now: float) -> bool:
    """Count a chunk; returns True if it must be stored (open call, consent not refused).

    A duplicate (same leg and chunk_seq) returns True as well: storing it again overwrites the
    same table key with the same bytes.
    """
    state.last_seen = now
    if state.status != OPEN:
        return False
    if state.consent is False:
        state.dropped_no_consent += 1
        return False
    if not interval_add(state.received[LEG_NAMES[chunk.leg]], int(chunk.chunk_seq)):
        state.duplicates += 1
    return True


def apply_ended(state: CallState, ended: events_pb2.CallEnded, now: float) -> None:
    state.last_seen = now
    if state.status != OPEN or state.ended is not None:
        return
    state.ended = json_format.MessageToDict(ended, preserving_proto_field_name=True)
    state.ended_seen = now


def due_reason(
    state: CallState,
    now: float,
    *,
    grace_seconds: float,
    idle_seconds: float,
    orphan_seconds: float,
    alive_since: float,
    backlog: bool = False,
) -> str | None:
    """Why this open call must be finalised now, or None to keep waiting.

    * complete: ended, and every announced chunk of both legs is here (or no consent);
    * grace_expired: ended, chunks missing, and no record of the call for ``grace_seconds``;
    * no_started_event: chunks but no started event for ``orphan_seconds`` since the first one;
    * timeout: no ended event and no record of the call for ``idle_seconds``.

    ``backlog`` says the consumer is behind on the call's partitions (records not yet read):
    the missing chunks or the started event may still be queued, so grace and orphan wait;
    only ``idle_seconds`` still applies. ``alive_since`` is when this worker process started:
    after a restart every call gets its full waiting time again.
    """
    if state.status != OPEN:
        return None
    if state.is_complete():
        return REASON_COMPLETE
    quiet = now - max(state.last_seen, alive_since)  # since the last record of this call
    if state.started is None:
        waited = now - max(state.first_seen, alive_since)
        if waited >= idle_seconds or (not backlog and waited >= orphan_seconds):
            return REASON_NO_START
        return None
    if state.ended_seen is not None:
        if quiet >= idle_seconds or (not backlog and quiet >= grace_seconds):
            return REASON_GRACE
        return None
    if quiet >= idle_seconds:
        return REASON_TIMEOUT
    return None


def start_finalizing(state: CallState, reason: str, now: float) -> None:
    state.status = FINALIZING
    state.finalize_reason = reason
    state.finalize_started = now


def retry_due(
    state: CallState, now: float, *, running: bool, retry_seconds: float, alive_since: float
) -> bool:
    """A finalisation that is not running in this process (it failed, or an earlier worker
    died during it) is started again: at once after a restart, else after a backoff that
    doubles with each failure (capped at 16x; no jitter, the timer's tick is jitter enough)."""
    if state.status != FINALIZING or running:
        return False
    started = state.finalize_started or 0.0
    if started < alive_since:
        return True
    policy = RetryPolicy(max_attempts=None, max_elapsed_s=None, initial_delay_s=retry_seconds,
                         max_delay_s=16 * retry_seconds, jitter=0.0)
    return now - started >= policy.backoff(state.attempts + 1)


def mark_failed(state: CallState, now: float) -> None:
    state.attempts += 1
    state.finalize_started = now


def mark_done(state: CallState, outcome: dict[str, Any], now: float) -> None:
    state.status = RECORDED if outcome.get("recording_status") == RECORDED else SKIPPED
    state.outcome = outcome
    state.done_at = now
    # The sequence lists are no longer needed; keep the tombstone small.
    state.received = {"lupita": [], "person": []}


def purge_due(state: CallState, now: float, retention_seconds: float) -> bool:
    return state.status in DONE and state.done_at is not None and now - state.done_at >= retention_seconds
