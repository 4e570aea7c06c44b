"""Postgres access of the context API: a small pool of synchronous psycopg connections used from
worker threads (never on the event loop), and every read and write the webhook needs.

A person's context is :func:`read_profile`: the ``person_profiles`` row (migration 0008: kept
current by the database in the same transaction as every fact, call and alert write), the
pending callbacks and the relevant past conversations stored at the person's last analysis
(``person_past_conversations``, 0012) — three indexed reads in one round trip — plus, during a call, the alerts that
call has raised so far (``call_alerts`` by call id: the understanding stage writes them live).
:func:`read_fanout` computes the same from the base tables per request (the baseline the
benchmark compares with, and what the profile replaced). Reads are by ``phone_number_hash`` on
indexed columns. Facts are read and written through
:mod:`lupita.facts`, the one fact store the stream processor's analyzer writes through too. Each connection carries a statement timeout, so a slow store costs a
bounded time; a connection that saw an error is closed instead of returned.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row



class StoreUnavailable(RuntimeError):
    """No connection could be had in time (the message never holds the DSN)."""


class Pool:
    """At most ``size`` connections, opened lazily; :meth:`connection` waits ``wait_s`` at most."""

    def __init__(self, dsn: str, size: int, timeout_ms: int) -> None:
        self._dsn = dsn
        self._size = size
        self._timeout_ms = timeout_ms
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> psycopg.Connection:
        # the DSN's own options (e.g. a search_path) are kept: the keyword would replace them
        given = psycopg.conninfo.conninfo_to_dict(self._dsn).get("options") or ""
        return psycopg.connect(
            self._dsn, autocommit=True,
            connect_timeout=max(1, round(self._timeout_ms / 1000)),
            options=f"{given} -c statement_timeout={self._timeout_ms} -c lock_timeout={self._timeout_ms}".strip(),
            application_name="lupita-context-api",
        )

    @contextmanager
    def connection(self, wait_s: float) -> Iterator[psycopg.Connection]:
        conn = self._take(wait_s)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            self._give(conn, ok)

    def _take(self, wait_s: float) -> psycopg.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._opened < self._size
            if grow:
                self._opened += 1
        if grow:
            try:
                return self._open()
            except psycopg.Error as exc:
                with self._lock:
                    self._opened -= 1
                raise StoreUnavailable(f"postgres unreachable ({type(exc).__name__})") from None
        try:
            return self._idle.get(timeout=wait_s)
        except queue.Empty:
            raise StoreUnavailable("no postgres connection free in time") from None

    def _give(self, conn: psycopg.Connection, ok: bool) -> None:
        if ok and not self._closed and not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._idle.put(conn)
            return
        try:
            conn.close()
        finally:
            with self._lock:
                self._opened -= 1

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


# --------------------------------------------------------------------------- reads


@dataclass(frozen=True)
class Snapshot:
    """What the store holds about one person (rows as dicts)."""

    facts: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    callbacks: list[dict[str, Any]]
    # [{topic, calls, last_at}] topics of >= 2 of the person's last 50 calls
    recurring_topics: list[dict[str, Any]] = field(default_factory=list)
    # {"worked": [{code, calls, good}], "sensitive_topics": [{topic, calls, bad}]}
    hints: dict[str, Any] = field(default_factory=dict)
    # alerts the LIVE call has raised so far (call_alerts of its call id)
    live_alerts: list[dict[str, Any]] = field(default_factory=list)
    # relevant past conversations (Weaviate, this person's only): [{call_id, started_at, summary, ...}]
    past: list[dict[str, Any]] = field(default_factory=list)
    # the Weaviate object of the person's latest analysed call (the similarity query's anchor)
    anchor: str | None = None
    # parts that could not be had in time ({"past_conversations": "timeout"}): said in the context
    degraded: dict[str, str] = field(default_factory=dict)
    # the past conversations the stream processor stored at the person's last analysis
    # (person_past_conversations): (the anchor's Weaviate id, the candidates nearest first)
    stored_past: tuple[str, list[dict[str, Any]]] | None = None


_CALLBACKS = """
SELECT id, scheduled_for, reason FROM scheduled_callbacks
WHERE phone_number_hash = %s AND status = 'pending' AND scheduled_for >= now()
ORDER BY scheduled_for LIMIT 5
"""


# --------------------------------------------------------------------------- the profile

_PROFILE = """
SELECT facts, last_calls, recurring_topics, behavioral_hints, alerts
FROM person_profiles WHERE phone_number_hash = %s
"""
# the relevant past conversations computed when the person's latest call was analysed (0012)
_STORED_PAST = """
SELECT anchor_weaviate_id::text AS anchor, items FROM person_past_conversations WHERE phone_number_hash = %s
"""
# the fan-out: the profile's own functions evaluated over the base tables, per request
_FANOUT = """
SELECT lupita_profile_facts(%(p)s) AS facts, c -> 'last_calls' AS last_calls,
       c -> 'recurring_topics' AS recurring_topics, c -> 'behavioral_hints' AS behavioral_hints,
       lupita_profile_alerts(%(p)s) AS alerts
FROM lupita_profile_calls(%(p)s) AS c
"""
# the live call's alerts; a call row that belongs to someone else never shows (a wrong call id)
_LIVE_ALERTS = """
SELECT a.call_id, a.cue_id, a.severity, a.evidence ->> 'text' AS text, a.raised_at, a.to_verify, a.verification
FROM call_alerts a LEFT JOIN companion_calls c ON c.call_id = a.call_id
WHERE a.call_id = ANY(%s) AND (c.phone_number_hash IS NULL OR c.phone_number_hash = %s)
ORDER BY a.raised_at, a.cue_id LIMIT 20
"""


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _dated(rows: Any, *names: str) -> list[dict[str, Any]]:
    out = []
    for r in rows or ():
        r = dict(r)
        for n in names:
            r[n] = _ts(r.get(n))
        out.append(r)
    return out


def snapshot_of(row: dict[str, Any] | None, callbacks: list[dict[str, Any]], live: list[dict[str, Any]], *,
                max_facts: int, recent_calls: int, alert_days: int, now: datetime) -> Snapshot:
    """The :class:`Snapshot` of a profile row (None: the person has no profile)."""
    if row is None:
        return Snapshot([], [], [], callbacks, live_alerts=live)
    facts = _dated(row["facts"], "observed_at")[:max_facts]
    calls = _dated(row["last_calls"], "started_at", "ended_at")
    since = now - timedelta(days=alert_days)
    alerts = [a for a in _dated(row["alerts"], "raised_at") if alert_days and a["raised_at"] >= since][:10]
    anchor = next((c["weaviate_id"] for c in calls if c.get("weaviate_id")), None)
    return Snapshot(facts, calls[:recent_calls], alerts, callbacks,
                    recurring_topics=_dated(row["recurring_topics"], "last_at"),
                    hints=dict(row["behavioral_hints"] or {}), live_alerts=live, anchor=anchor)


def read_profile(conn: psycopg.Connection, person: str, *, max_facts: int, recent_calls: int, alert_days: int,
                 live_call_ids: tuple[str, ...] = (), fanout: bool = False) -> Snapshot:
    """The person's snapshot from the profile row, the pending callbacks and the stored past
    conversations (three indexed reads), with the live call's alerts when ``live_call_ids`` are
    given — one round trip (libpq pipeline). ``fanout``: compute the profile from the base tables
    instead, and no stored past conversations (the baseline)."""
    with conn.pipeline():
        profile = conn.cursor(row_factory=dict_row).execute(*((_FANOUT, {"p": person}) if fanout else
                                                              (_PROFILE, (person,))))
        cbs = conn.cursor(row_factory=dict_row).execute(_CALLBACKS, (person,))
        live = conn.cursor(row_factory=dict_row).execute(_LIVE_ALERTS, (list(live_call_ids), person)) \
            if live_call_ids else None
        past = None if fanout else conn.cursor(row_factory=dict_row).execute(_STORED_PAST, (person,))
    row = profile.fetchone()
    stored = past.fetchone() if past is not None else None
    if fanout and row is not None and not row["facts"] and not row["last_calls"]:
        row = None
    snap = snapshot_of(row, cbs.fetchall(), live.fetchall() if live is not None else [], max_facts=max_facts,
                       recent_calls=recent_calls, alert_days=alert_days, now=datetime.now(timezone.utc))
    return replace(snap, stored_past=(stored["anchor"], list(stored["items"] or []))) if stored else snap


def with_past(snap: Snapshot, past: list[dict[str, Any]], degraded: dict[str, str]) -> Snapshot:
    return replace(snap, past=past, degraded={**snap.degraded, **degraded})


# --------------------------------------------------------------------------- callbacks

# pg_advisory_xact_lock(class, hashtext(person)): one scheduleCallback per person at a time, so
# two retries of the same request cannot both insert ("lupc" in ASCII)
CALLBACK_LOCK_CLASS = 0x6C757063


def schedule_callback(conn: psycopg.Connection, *, person: str, when: datetime, reason: str,
                      call_id: str | None, window: timedelta) -> tuple[bool, datetime]:
    """Insert a pending callback unless the person already has one within ``window`` of ``when``;
    returns (created, the time of the callback kept)."""
    when = when.replace(second=0, microsecond=0)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CALLBACK_LOCK_CLASS, person))
        row = conn.execute(
            "SELECT scheduled_for FROM scheduled_callbacks WHERE phone_number_hash = %s AND status = 'pending' "
            "AND scheduled_for BETWEEN %s AND %s ORDER BY abs(extract(epoch FROM scheduled_for - %s)) LIMIT 1",
            (person, when - window, when + window, when),
        ).fetchone()
        if row is not None:
            return False, row[0]
        conn.execute(
            "INSERT INTO scheduled_callbacks (phone_number_hash, call_id, scheduled_for, reason) "
            "VALUES (%s, %s, %s, %s)",
            (person, call_id, when, reason),
        )
    return True, when


# --------------------------------------------------------------------------- VAPI call reports

_STATUS = """
INSERT INTO vapi_calls AS v (vapi_call_id, call_id, phone_number_hash, status, ended_reason)
VALUES (%(vapi_call_id)s, %(call_id)s, %(hash)s, %(status)s, %(ended_reason)s)
ON CONFLICT (vapi_call_id) DO UPDATE SET
    call_id = COALESCE(v.call_id, EXCLUDED.call_id),
    phone_number_hash = COALESCE(v.phone_number_hash, EXCLUDED.phone_number_hash),
    status = CASE WHEN v.status = 'ended' THEN v.status ELSE COALESCE(EXCLUDED.status, v.status) END,
    ended_reason = COALESCE(v.ended_reason, EXCLUDED.ended_reason),
    updated_at = now()
"""

_REPORT = """
INSERT INTO vapi_calls AS v (vapi_call_id, call_id, phone_number_hash, status, ended_reason, started_at,
                             ended_at, duration_seconds, report_received_at)
VALUES (%(vapi_call_id)s, %(call_id)s, %(hash)s, 'ended', %(ended_reason)s, %(started_at)s, %(ended_at)s,
        %(duration)s, now())
ON CONFLICT (vapi_call_id) DO UPDATE SET
    call_id = COALESCE(v.call_id, EXCLUDED.call_id),
    phone_number_hash = COALESCE(v.phone_number_hash, EXCLUDED.phone_number_hash),
    status = 'ended',
    ended_reason = COALESCE(EXCLUDED.ended_reason, v.ended_reason),
    started_at = COALESCE(EXCLUDED.started_at, v.started_at),
    ended_at = COALESCE(EXCLUDED.ended_at, v.ended_at),
    duration_seconds = COALESCE(EXCLUDED.duration_seconds, v.duration_seconds),
    report_received_at = now(), updated_at = now()
WHERE v.report_received_at IS NULL
RETURNING 1
"""


def record_status(conn: psycopg.Connection, **row: Any) -> None:
    conn.execute(_STATUS, row)


def record_report(conn: psycopg.Connection, **row: Any) -> bool:
    """True when stored, False when this call's report was already stored (a redelivery)."""
    return conn.execute(_REPORT, row).fetchone() is not None


# --------------------------------------------------------------------------- callbacks (JSON API)

CALLBACK_COLUMNS = "id, scheduled_for, reason, status, call_id, created_at, updated_at"


def list_callbacks(conn: psycopg.Connection, person: str, *, include_closed: bool) -> list[dict[str, Any]]:
    """The person's callbacks, soonest first: pending ones only, or all (dispatched, cancelled…)."""
    where = "" if include_closed else " AND status = 'pending'"
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {CALLBACK_COLUMNS} FROM scheduled_callbacks WHERE phone_number_hash = %s{where} "
        "ORDER BY scheduled_for, id LIMIT 200", (person,)).fetchall()


def get_callback(conn: psycopg.Connection, person: str, *, when: datetime) -> dict[str, Any] | None:
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {CALLBACK_COLUMNS} FROM scheduled_callbacks WHERE phone_number_hash = %s AND status = 'pending' "
        "AND scheduled_for = %s", (person, when)).fetchone()


def cancel_callback(conn: psycopg.Connection, person: str, callback_id: int) -> tuple[str, dict[str, Any] | None]:
    """("cancelled", row) | ("not_pending", row) | ("not_found", None): only the person's own."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        f"UPDATE scheduled_callbacks SET status = 'cancelled', updated_at = now() WHERE id = %s AND "
        f"phone_number_hash = %s AND status = 'pending' RETURNING {CALLBACK_COLUMNS}", (callback_id, person)).fetchone()
    if row is not None:
        return "cancelled", row
    row = cur.execute(f"SELECT {CALLBACK_COLUMNS} FROM scheduled_callbacks WHERE id = %s AND phone_number_hash = %s",
                      (callback_id, person)).fetchone()
    return ("not_pending", row) if row is not None else ("not_found", None)
