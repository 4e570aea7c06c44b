"""Postgres sink of the understanding stages: the analysis of a call, its utterances, the facts
learned about the person, and alerts. Every write is keyed by its natural key, so a replay or a
redelivered Kafka record rewrites the same rows instead of adding, and a replay that brings
nothing new changes nothing at all (no row, no value, no ``updated_at``).

- :meth:`PostgresSink.write_call_analysis` — ONE transaction:
  ``companion_calls`` analysis columns + ``processed_at`` (the row is inserted as
  ``recording_status='pending'`` with only those columns if the recorder has not written the call
  yet; the recorder's upsert later fills its own columns and never touches these),
  ``call_utterances`` replaced for the call (same (leg, seq) updated, missing ones deleted), and
  ``user_facts`` upserted per :func:`upsert_fact` (the rule of :mod:`lupita.facts`).
- :meth:`PostgresSink.write_alert` — ``call_alerts`` once per (call, cue); the first evidence wins.

The connection is the recorder's :class:`~stream_processor.stores.calls_db.CallStore` (one lazily opened
connection, re-opened after an error). Transient errors (server down, connection lost,
deadlock, serialization failure) are retried per :class:`~.retry.RetryPolicy`; permanent ones
(constraint violations, bad data) raise :class:`~.retry.SinkRejected` at once; malformed input
raises :class:`~.retry.InvalidSinkInput` before anything is written. Synchronous: call it from a
worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from lupita import facts

from stream_processor.stores.calls_db import CallStore
from stream_processor.contracts import AlertHit, CallAnalysis, EvidenceSpan, Utterance, UserFact
from stream_processor.stores import metrics
from stream_processor.stores.retry import InvalidSinkInput, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

STORE = "postgres"
ANALYSIS_SCHEMA = "lupita.call-analysis/v1"
LEGS = ("lupita", "person")
CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # the CHECK of companion_calls
SEVERITIES = ("critical", "high", "medium", "low")
# the fact store is lupita.facts (shared with the context API); its names, kept here for callers
FACT_SOURCES = facts.SOURCES
FACT_LOCK_CLASS = facts.FACT_LOCK_CLASS
INSERTED, CONFIRMED, SUPERSEDED = facts.INSERTED, facts.CONFIRMED, facts.SUPERSEDED
UNCHANGED, STALE, TO_CONFIRM = facts.UNCHANGED, facts.STALE, facts.TO_CONFIRM

# SQLSTATE classes of OperationalErrors a retry cannot fix: 28 invalid authorization
# (bad password), 3D invalid catalog name (no such database).
_PERMANENT_SQLSTATE_CLASSES = ("28", "3D")


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the server is down, restarting, overloaded, the
    connection was lost, or the transaction lost a deadlock / serialization race."""
    if isinstance(exc, psycopg.OperationalError):  # includes TransactionRollbackError, QueryCanceled
        state = exc.sqlstate or ""
        return not state.startswith(_PERMANENT_SQLSTATE_CLASSES)
    if isinstance(exc, psycopg.InterfaceError):  # e.g. "the connection is closed"
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


# --------------------------------------------------------------------------- validation (pure)


def _bad(operation: str, message: str) -> InvalidSinkInput:
    return InvalidSinkInput(f"{STORE} {operation}: {message}", store=STORE, operation=operation)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(op: str, name: str, value: Any, *, empty_ok: bool = True) -> str:
    if not isinstance(value, str):
        raise _bad(op, f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise _bad(op, f"{name} contains a NUL character (Postgres text cannot store it)")
    if not empty_ok and not value.strip():
        raise _bad(op, f"{name} must not be empty")
    return value


def _probability(op: str, name: str, value: Any) -> float:
    if not _finite(value) or not 0.0 <= float(value) <= 1.0:
        raise _bad(op, f"{name} must be a number between 0 and 1, got {value!r}")
    return float(value)


def check_call_id(op: str, call_id: Any) -> str:
    if not isinstance(call_id, str) or not CALL_ID_RE.match(call_id):
        raise _bad(op, f"invalid call_id {call_id!r} (1-128 of A-Z a-z 0-9 _ -, starting alphanumeric)")
    return call_id


def evidence_json(span: EvidenceSpan | None) -> dict[str, Any] | None:
    return None if span is None else asdict(span)


def check_utterances(op: str, call_id: str, utterances: Sequence[Utterance]) -> list[Utterance]:
    """The utterances as given, after checking each one and that no (leg, seq) repeats."""
    seen: set[tuple[str, int]] = set()
    out: list[Utterance] = []
    for i, u in enumerate(utterances):
        where = f"utterance #{i}"
        if not isinstance(u, Utterance):
            raise _bad(op, f"{where} is a {type(u).__name__}, not an Utterance")
        if u.call_id != call_id:
            raise _bad(op, f"{where} belongs to call {u.call_id!r}, not {call_id!r}")
        if u.leg not in LEGS:
            raise _bad(op, f"{where} has leg {u.leg!r}; expected one of {', '.join(LEGS)}")
        if not isinstance(u.seq, int) or isinstance(u.seq, bool) or not 0 <= u.seq < 2**31:
            raise _bad(op, f"{where} has seq {u.seq!r}; expected an integer >= 0")
        if not _finite(u.start_s) or not _finite(u.end_s) or u.end_s < u.start_s:
            raise _bad(op, f"{where} ({u.leg} #{u.seq}) has times {u.start_s!r}..{u.end_s!r}; "
                       "expected finite numbers with end_s >= start_s")
        _probability(op, f"{where} confidence", u.confidence)
        _text(op, f"{where} text", u.text)
        if (u.leg, u.seq) in seen:
            raise _bad(op, f"{where} repeats ({u.leg}, seq {u.seq})")
        seen.add((u.leg, u.seq))
        out.append(u)
    return out


def check_fact(op: str, fact: UserFact, where: str = "fact") -> UserFact:
    if not isinstance(fact, UserFact):
        raise _bad(op, f"{where} is a {type(fact).__name__}, not a UserFact")
    _text(op, f"{where} fact_type", fact.fact_type, empty_ok=False)
    _text(op, f"{where} key", fact.key, empty_ok=False)
    _text(op, f"{where} value", fact.value)
    _probability(op, f"{where} confidence", fact.confidence)
    if fact.evidence is not None:
        if not isinstance(fact.evidence, EvidenceSpan):
            raise _bad(op, f"{where} evidence is a {type(fact.evidence).__name__}, not an EvidenceSpan")
        _text(op, f"{where} evidence text", fact.evidence.text)
    return fact


def dedupe_facts(facts: Iterable[UserFact]) -> tuple[list[UserFact], int]:
    """One fact per (type, key): the most confident, the later one on a tie. Returns the facts
    in first-seen key order and how many were dropped."""
    best: dict[tuple[str, str], UserFact] = {}
    total = 0
    for fact in facts:
        total += 1
        k = (fact.fact_type, fact.key)
        if k not in best or fact.confidence >= best[k].confidence:
            best[k] = fact
    return list(best.values()), total - len(best)


def analysis_json(analysis: CallAnalysis, conversation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``companion_calls.analysis`` document: what has no column of its own, and the call's
    conversation figures (talk time per leg, turns, overlaps, longest silence, words per minute,
    final running sentiment) when given."""
    return {
        "conversation": dict(conversation or {}),
        "schema": ANALYSIS_SCHEMA,
        "analyzer": analysis.analyzer,
        "emotion_trend": [{"start_s": float(t), "emotion": e} for t, e in analysis.emotion_trend],
        "notes": list(analysis.notes),
        "facts": [
            {"type": f.fact_type, "key": f.key, "value": f.value, "confidence": float(f.confidence)}
            for f in analysis.facts
        ],
    }


def _check_analysis(op: str, call_id: str, analysis: CallAnalysis) -> None:
    if not isinstance(analysis, CallAnalysis):
        raise _bad(op, f"analysis is a {type(analysis).__name__}, not a CallAnalysis")
    if analysis.call_id != call_id:
        raise _bad(op, f"the analysis belongs to call {analysis.call_id!r}, not {call_id!r}")
    for i, topic in enumerate(analysis.topics):
        _text(op, f"topic #{i}", topic, empty_ok=False)
    for i, code in enumerate(analysis.behavioral_codes):
        _text(op, f"behavioral code #{i}", code, empty_ok=False)
    _text(op, "emotion_primary", analysis.emotion_primary)
    _text(op, "summary", analysis.summary)
    for i, (t, e) in enumerate(analysis.emotion_trend):
        if not _finite(t):
            raise _bad(op, f"emotion_trend #{i} has a non-finite time {t!r}")
        _text(op, f"emotion_trend #{i} emotion", e)
    for i, fact in enumerate(analysis.facts):
        check_fact(op, fact, f"fact #{i}")
    for i, note in enumerate(analysis.notes):
        _text(op, f"note #{i}", note)


# --------------------------------------------------------------------------- SQL

_UPSERT_ANALYSIS = """
INSERT INTO companion_calls AS c (
    call_id, phone_number_hash, recording_status, weaviate_id, summary, topics, emotion_primary,
    behavioral_codes_triggered, transcript, analysis, processed_at
) VALUES (
    %(call_id)s, %(phone_number_hash)s, 'pending', %(weaviate_id)s, %(summary)s, %(topics)s,
    %(emotion_primary)s, %(behavioral_codes)s, %(transcript)s, %(analysis)s, now()
)
ON CONFLICT (call_id) DO UPDATE SET
    phone_number_hash = COALESCE(c.phone_number_hash, EXCLUDED.phone_number_hash),
    weaviate_id = EXCLUDED.weaviate_id,
    summary = EXCLUDED.summary,
    topics = EXCLUDED.topics,
    emotion_primary = EXCLUDED.emotion_primary,
    behavioral_codes_triggered = EXCLUDED.behavioral_codes_triggered,
    transcript = EXCLUDED.transcript,
    analysis = EXCLUDED.analysis,
    processed_at = now(),
    updated_at = now()
WHERE c.processed_at IS NULL
   OR (c.phone_number_hash IS NULL AND EXCLUDED.phone_number_hash IS NOT NULL)
   OR (c.weaviate_id, c.summary, c.topics, c.emotion_primary, c.behavioral_codes_triggered,
       c.transcript, c.analysis)
      IS DISTINCT FROM
      (EXCLUDED.weaviate_id, EXCLUDED.summary, EXCLUDED.topics, EXCLUDED.emotion_primary,
       EXCLUDED.behavioral_codes_triggered, EXCLUDED.transcript, EXCLUDED.analysis)
RETURNING (xmax = 0) AS inserted
"""

_CALL_PERSON = """
SELECT phone_number_hash, COALESCE(%(observed_at)s::timestamptz, started_at, created_at)
FROM companion_calls WHERE call_id = %(call_id)s
"""

# the person's relevant past conversations as of this call (migration 0012); an older call's
# replay leaves the answer of a later call in place, and the same answer again rewrites nothing
_UPSERT_PAST = """
INSERT INTO person_past_conversations AS pc (phone_number_hash, anchor_call_id, anchor_weaviate_id,
                                             anchor_started_at, items)
VALUES (%(person)s, %(call_id)s, %(weaviate_id)s, %(started_at)s, %(items)s)
ON CONFLICT (phone_number_hash) DO UPDATE SET
    anchor_call_id = EXCLUDED.anchor_call_id, anchor_weaviate_id = EXCLUDED.anchor_weaviate_id,
    anchor_started_at = EXCLUDED.anchor_started_at, items = EXCLUDED.items, computed_at = now()
WHERE pc.anchor_started_at <= EXCLUDED.anchor_started_at
  AND (pc.anchor_call_id, pc.anchor_weaviate_id, pc.anchor_started_at, pc.items)
      IS DISTINCT FROM (EXCLUDED.anchor_call_id, EXCLUDED.anchor_weaviate_id, EXCLUDED.anchor_started_at, EXCLUDED.items)
"""

_DELETE_STALE_UTTERANCES = """
DELETE FROM call_utterances u
WHERE u.call_id = %(call_id)s
  AND NOT EXISTS (
      SELECT 1 FROM unnest(%(legs)s::text[], %(seqs)s::int[]) AS k(leg, seq)
      WHERE k.leg = u.leg AND k.seq = u.seq)
"""

_UPSERT_UTTERANCES = """
INSERT INTO call_utterances AS u (call_id, leg, seq, start_s, end_s, text, confidence)
SELECT %(call_id)s, k.leg, k.seq, k.start_s, k.end_s, k.text, k.confidence
FROM unnest(%(legs)s::text[], %(seqs)s::int[], %(starts)s::float8[], %(ends)s::float8[],
            %(texts)s::text[], %(confidences)s::float8[])
     AS k(leg, seq, start_s, end_s, text, confidence)
ON CONFLICT (call_id, leg, seq) DO UPDATE SET
    start_s = EXCLUDED.start_s, end_s = EXCLUDED.end_s, text = EXCLUDED.text,
    confidence = EXCLUDED.confidence
WHERE (u.start_s, u.end_s, u.text, u.confidence)
      IS DISTINCT FROM (EXCLUDED.start_s, EXCLUDED.end_s, EXCLUDED.text, EXCLUDED.confidence)
"""

_INSERT_ALERT = """
INSERT INTO call_alerts (call_id, cue_id, severity, evidence, raised_at, to_verify, verification)
VALUES (%(call_id)s, %(cue_id)s, %(severity)s, %(evidence)s, COALESCE(%(raised_at)s::timestamptz, now()),
        %(to_verify)s, %(verification)s)
ON CONFLICT (call_id, cue_id) DO NOTHING
RETURNING 1
"""


def upsert_fact(
    conn: psycopg.Connection,
    *,
    phone_number_hash: str,
    fact: UserFact,
    source_call_id: str | None,
    observed_at: datetime,
    source: str = "analysis",
) -> str:
    """Store one observation of ``fact`` inside the caller's transaction; returns the outcome
    (``inserted``, ``confirmed``, ``unchanged``, ``superseded``, ``stale``, ``to_confirm``).

    The rule is :func:`lupita.facts.record`, the one fact store the context API's saveUserFact
    uses too: bi-temporal history, multi-valued keys, protected facts the analyzer alone never
    closes, observations instead of duplicates, and the evidence's transcription confidence read
    from the call's utterances (written earlier in the same transaction).
    """
    if source not in FACT_SOURCES:
        raise ValueError(f"source must be one of {FACT_SOURCES}")
    obs = facts.Observation(
        fact_type=fact.fact_type, key=fact.key, value=fact.value, confidence=float(fact.confidence),
        observed_at=observed_at, source=source, call_id=source_call_id, evidence=evidence_json(fact.evidence),
    )
    try:
        return facts.record(conn, phone_number_hash, obs).outcome
    except facts.FactInputError as exc:
        raise _bad("upsert_fact", str(exc)) from None


# --------------------------------------------------------------------------- the sink


@dataclass(frozen=True)
class AnalysisWrite:
    """What one :meth:`PostgresSink.write_call_analysis` changed."""

    call_row: str  # "inserted" (pending row, recorder not there yet) | "updated" | "unchanged"
    utterances_written: int  # inserted or changed
    utterances_deleted: int  # no longer in the call's transcript
    facts: dict[str, int] = field(default_factory=dict)  # outcome -> count
    facts_dropped_duplicates: int = 0
    facts_skipped_no_person: int = 0  # no phone_number_hash known for the call

    @property
    def changed(self) -> bool:
        return (
            self.call_row != "unchanged"
            or self.utterances_written > 0
            or self.utterances_deleted > 0
            or any(n for k, n in self.facts.items() if k not in (UNCHANGED, STALE))
        )


class PostgresSink:
    """Idempotent writes of the understanding results; see the module docstring."""

    def __init__(
        self,
        store: CallStore,
        *,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._store = store
        self._policy = policy or RetryPolicy()
        self._stop = stop

    @classmethod
    def connect(
        cls,
        dsn: str,
        *,
        connect_timeout: int = 5,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> "PostgresSink":
        """A sink with its own :class:`CallStore` (the connection opens on first use)."""
        return cls(CallStore(dsn, connect_timeout=connect_timeout), policy=policy, stop=stop)

    @classmethod
    def from_settings(cls, settings: Any, *, stop: threading.Event | None = None) -> "PostgresSink":
        """From a :class:`~.settings.SinkSettings` (or a settings class deriving from it)."""
        return cls.connect(
            settings.postgres_dsn.get_secret_value(),
            connect_timeout=settings.sink_postgres_connect_timeout_seconds,
            policy=settings.retry_policy,
            stop=stop,
        )

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "PostgresSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _run(
        self,
        operation: str,
        call_id: str | None,
        work: Callable[[psycopg.Connection], T],
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ) -> T:
        return metrics.measured_retry(
            lambda: self._store.run(work), store=STORE, operation=operation, call_id=call_id, policy=self._policy,
            is_transient=is_transient, stop=self._stop, on_retry=on_retry,
        )

    def ping(self, *, on_retry: Callable[[int, float, BaseException], None] | None = None) -> None:
        """Round-trip to the server (with the retry policy); readiness checks and tests."""
        self._run("ping", None, lambda conn: conn.execute("SELECT 1").fetchone(), on_retry)

    # -- writes

    def write_call_analysis(
        self,
        call_id: str,
        analysis: CallAnalysis,
        transcript: str,
        utterances: Sequence[Utterance],
        weaviate_id: uuid.UUID | str | None,
        phone_number_hash: str | None,
        *,
        observed_at: datetime | None = None,
        conversation: dict[str, Any] | None = None,
        past: Sequence[dict[str, Any]] | None = None,
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ) -> AnalysisWrite:
        """Store a call's analysis, utterances and facts in one transaction (see module doc).

        ``observed_at`` dates the facts' observation (pass the call's start); by default the
        call row's ``started_at``, or when the recorder has not written it yet the time the row
        was first created, so a replay dates them the same way.

        ``past``: the person's calls nearest to this one (Weaviate, theirs only; see
        ``understanding.core.past_item``), kept as their ``person_past_conversations`` row with this
        call as its anchor — unless the row is about a later call already (a replay of an older one).
        """
        op = "write_call_analysis"
        check_call_id(op, call_id)
        _check_analysis(op, call_id, analysis)
        _text(op, "transcript", transcript)
        rows = check_utterances(op, call_id, utterances)
        if weaviate_id is not None:
            try:
                weaviate_id = uuid.UUID(str(weaviate_id))
            except ValueError:
                raise _bad(op, f"weaviate_id {weaviate_id!r} is not a UUID") from None
        if phone_number_hash is not None:
            _text(op, "phone_number_hash", phone_number_hash, empty_ok=False)
        facts, dropped = dedupe_facts(analysis.facts)
        if past is not None:
            if not isinstance(past, (list, tuple)) or not all(
                    isinstance(p, dict) and p.get("phone_number_hash") == phone_number_hash for p in past):
                raise _bad(op, "past must be a list of the person's own calls")
            if weaviate_id is None or phone_number_hash is None:
                raise _bad(op, "past needs the call's weaviate_id and the person's hash")

        call_params = {
            "call_id": call_id,
            "phone_number_hash": phone_number_hash,
            "weaviate_id": weaviate_id,
            "summary": analysis.summary,
            "topics": Jsonb(list(analysis.topics)),
            "emotion_primary": analysis.emotion_primary or None,
            "behavioral_codes": Jsonb(list(analysis.behavioral_codes)),
            "transcript": transcript,
            "analysis": Jsonb(analysis_json(analysis, conversation)),
        }
        utt_params = {
            "call_id": call_id,
            "legs": [u.leg for u in rows],
            "seqs": [u.seq for u in rows],
            "starts": [float(u.start_s) for u in rows],
            "ends": [float(u.end_s) for u in rows],
            "texts": [u.text for u in rows],
            "confidences": [float(u.confidence) for u in rows],
        }

        def work(conn: psycopg.Connection) -> AnalysisWrite:
            ret = conn.execute(_UPSERT_ANALYSIS, call_params).fetchone()
            call_row = "unchanged" if ret is None else ("inserted" if ret[0] else "updated")
            deleted = conn.execute(_DELETE_STALE_UTTERANCES, utt_params).rowcount
            written = conn.execute(_UPSERT_UTTERANCES, utt_params).rowcount if rows else 0
            person, observed = conn.execute(
                _CALL_PERSON, {"call_id": call_id, "observed_at": observed_at}
            ).fetchone()
            if past is not None and person == phone_number_hash and observed is not None:
                conn.execute(_UPSERT_PAST, {"person": person, "call_id": call_id, "weaviate_id": weaviate_id,
                                            "started_at": observed, "items": Jsonb(list(past))})
            outcomes: Counter[str] = Counter()
            skipped = 0
            if facts and not person:
                skipped = len(facts)
            for fact in facts if person else ():
                outcomes[
                    upsert_fact(
                        conn, phone_number_hash=person, fact=fact, source_call_id=call_id,
                        observed_at=observed,
                    )
                ] += 1
            return AnalysisWrite(
                call_row=call_row,
                utterances_written=max(written, 0),
                utterances_deleted=max(deleted, 0),
                facts=dict(outcomes),
                facts_dropped_duplicates=dropped,
                facts_skipped_no_person=skipped,
            )

        result = self._run(op, call_id, work, on_retry)
        if result.facts_skipped_no_person:
            log.warning(
                "facts not stored: no phone_number_hash known for the call",
                extra={"stage": "sink", "call_id": call_id, "facts": result.facts_skipped_no_person},
            )
        log.info(
            "call analysis stored",
            extra={
                "stage": "sink",
                "call_id": call_id,
                "store": STORE,
                "call_row": result.call_row,
                "utterances_written": result.utterances_written,
                "utterances_deleted": result.utterances_deleted,
                "facts": result.facts,
            },
        )
        return result

    def write_alert(
        self,
        hit: AlertHit,
        *,
        raised_at: datetime | None = None,
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ) -> bool:
        """Store an alert once per (call, cue); True if this call stored it, False if it was
        already there (a redelivery, or the same cue again in the call: the first is kept)."""
        op = "write_alert"
        if not isinstance(hit, AlertHit):
            raise _bad(op, f"expected an AlertHit, got {type(hit).__name__}")
        check_call_id(op, hit.call_id)
        _text(op, "cue_id", hit.cue_id, empty_ok=False)
        if hit.severity not in SEVERITIES:
            raise _bad(op, f"severity {hit.severity!r}; expected one of {', '.join(SEVERITIES)}")
        if not isinstance(hit.evidence, EvidenceSpan):
            raise _bad(op, "an alert needs its EvidenceSpan")
        _text(op, "evidence text", hit.evidence.text)
        params = {
            "call_id": hit.call_id,
            "cue_id": hit.cue_id,
            "severity": hit.severity,
            "evidence": Jsonb(evidence_json(hit.evidence)),
            "raised_at": raised_at,
            "to_verify": bool(hit.to_verify),
            "verification": (hit.verification[:500] or None) if hit.to_verify else None,
        }
        new = self._run(op, hit.call_id, lambda conn: conn.execute(_INSERT_ALERT, params).fetchone() is not None,
                        on_retry)
        log.info(
            "alert stored" if new else "alert already stored",
            extra={"stage": "sink", "call_id": hit.call_id, "cue_id": hit.cue_id, "severity": hit.severity},
        )
        return new

