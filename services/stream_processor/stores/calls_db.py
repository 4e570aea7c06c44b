"""Postgres sink of the recorder: one ``companion_calls`` row and one ``consent_records`` row
per call, both upserts keyed by call_id, so a replay rewrites the same rows instead of adding.

Synchronous (psycopg 3): the worker calls it from its thread pool, never on the event loop.
The phone number arrives only encrypted (bytea) and as the keyed HMAC; neither is logged.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Callable, TypeVar

import psycopg

T = TypeVar("T")

_UPSERT_CALL = """
INSERT INTO companion_calls (
    call_id, phone_encrypted, phone_number_hash, region, direction, recording_consent,
    consent_source, s3_legal_key, s3_active_key, s3_metadata_key, recording_status,
    recording_skipped_reason, started_at, ended_at, duration_seconds, end_reason
) VALUES (
    %(call_id)s, %(phone_encrypted)s, %(phone_number_hash)s, %(region)s, %(direction)s,
    %(recording_consent)s, %(consent_source)s, %(s3_legal_key)s, %(s3_active_key)s,
    %(s3_metadata_key)s, %(recording_status)s, %(recording_skipped_reason)s, %(started_at)s,
    %(ended_at)s, %(duration_seconds)s, %(end_reason)s
)
ON CONFLICT (call_id) DO UPDATE SET
    phone_encrypted = EXCLUDED.phone_encrypted,
    phone_number_hash = COALESCE(EXCLUDED.phone_number_hash, companion_calls.phone_number_hash),
    region = EXCLUDED.region,
    direction = EXCLUDED.direction,
    recording_consent = EXCLUDED.recording_consent,
    consent_source = EXCLUDED.consent_source,
    s3_legal_key = EXCLUDED.s3_legal_key,
    s3_active_key = EXCLUDED.s3_active_key,
    s3_metadata_key = EXCLUDED.s3_metadata_key,
    recording_status = EXCLUDED.recording_status,
    recording_skipped_reason = EXCLUDED.recording_skipped_reason,
    started_at = EXCLUDED.started_at,
    ended_at = EXCLUDED.ended_at,
    duration_seconds = EXCLUDED.duration_seconds,
    end_reason = EXCLUDED.end_reason,
    updated_at = now()
-- a redelivery that brings nothing new leaves the row (and its updated_at) untouched
WHERE (companion_calls.phone_encrypted, companion_calls.phone_number_hash, companion_calls.region,
      companion_calls.direction, companion_calls.recording_consent, companion_calls.consent_source,
      companion_calls.s3_legal_key, companion_calls.s3_active_key, companion_calls.s3_metadata_key,
      companion_calls.recording_status, companion_calls.recording_skipped_reason,
      companion_calls.started_at, companion_calls.ended_at, companion_calls.duration_seconds,
      companion_calls.end_reason)
    IS DISTINCT FROM (EXCLUDED.phone_encrypted, COALESCE(EXCLUDED.phone_number_hash,
        companion_calls.phone_number_hash), EXCLUDED.region, EXCLUDED.direction,
        EXCLUDED.recording_consent, EXCLUDED.consent_source, EXCLUDED.s3_legal_key,
        EXCLUDED.s3_active_key, EXCLUDED.s3_metadata_key, EXCLUDED.recording_status,
        EXCLUDED.recording_skipped_reason, EXCLUDED.started_at, EXCLUDED.ended_at,
        EXCLUDED.duration_seconds, EXCLUDED.end_reason)
"""

_UPSERT_CONSENT = """
INSERT INTO consent_records (call_id, phone_number_hash, recording_consent, consent_source, recorded_at)
VALUES (%(call_id)s, %(phone_number_hash)s, %(recording_consent)s, %(consent_source)s, %(recorded_at)s)
ON CONFLICT (call_id) WHERE call_id IS NOT NULL DO UPDATE SET
    phone_number_hash = EXCLUDED.phone_number_hash,
    recording_consent = EXCLUDED.recording_consent,
    consent_source = EXCLUDED.consent_source,
    recorded_at = EXCLUDED.recorded_at
WHERE (consent_records.phone_number_hash, consent_records.recording_consent,
       consent_records.consent_source, consent_records.recorded_at)
    IS DISTINCT FROM (EXCLUDED.phone_number_hash, EXCLUDED.recording_consent,
                      EXCLUDED.consent_source, EXCLUDED.recorded_at)
"""


@dataclass(frozen=True)
class CallRow:
    """The recorder's columns of ``companion_calls``."""

    call_id: str
    phone_encrypted: bytes | None
    phone_number_hash: str | None
    region: str | None
    direction: str
    recording_consent: bool
    consent_source: str | None
    s3_legal_key: str | None
    s3_active_key: str | None
    s3_metadata_key: str
    recording_status: str  # "recorded" | "skipped"
    recording_skipped_reason: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_seconds: float | None
    end_reason: str | None

    def __repr__(self) -> str:  # never print the encrypted number or the hash by accident
        return f"CallRow(call_id={self.call_id!r}, recording_status={self.recording_status!r})"


class CallStore:
    """One lazily opened connection, re-opened after an error; thread-safe by a lock."""

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, connect_timeout=self._timeout, autocommit=True)
        return self._conn

    def write_call(self, row: CallRow) -> None:
        """Upsert the call row and its consent record in one transaction."""
        params = asdict(row)
        consent = {
            "call_id": row.call_id,
            "phone_number_hash": row.phone_number_hash,
            "recording_consent": row.recording_consent,
            "consent_source": row.consent_source,
            "recorded_at": row.started_at,
        }
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute(_UPSERT_CALL, params)
                    conn.execute(_UPSERT_CONSENT, consent)
            except psycopg.Error:
                conn.close()  # next call reconnects
                self._conn = None
                raise

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run ``work(conn)`` in one transaction on this store's connection (used by the
        understanding sinks); after an error the connection is dropped and re-opened next time."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    return work(conn)
            except psycopg.Error:
                conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
