"""Calls written the way the platform writes them (the stream processor's own writers: the recorder's
``CallStore.write_call``, the understanding sink's ``write_call_analysis`` and ``write_alert``), for
the profile, past-conversation and live-alert tests."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta, timezone

from ctxkit import dsn


def recorder_row(call_id: str, person: str, started: datetime):
    from stream_processor.stores.calls_db import CallRow

    return CallRow(call_id=call_id, phone_encrypted=None, phone_number_hash=person, region="oaxaca",
                   direction="outbound", recording_consent=True, consent_source="test", s3_legal_key=None,
                   s3_active_key=None, s3_metadata_key=f"calls/{call_id}/metadata.json", recording_status="recorded",
                   recording_skipped_reason=None, started_at=started, ended_at=started + timedelta(minutes=6),
                   duration_seconds=360.0, end_reason="completed")


def write_call(person: str, *, days_ago: float, topics: tuple[str, ...] = (), codes: tuple[str, ...] = (),
               emotion: str = "", summary: str = "", sentiment: float | None = None, facts=(),
               weaviate_id: uuid.UUID | None = None, call_id: str | None = None) -> str:
    """A finished call of ``person``: the recorder's row, then its analysis (topics, codes, emotion,
    summary, facts) in the sink's one transaction. Returns the call id."""
    from stream_processor.contracts import CallAnalysis, Utterance
    from stream_processor.stores.calls_db import CallStore
    from stream_processor.stores.postgres import PostgresSink

    call_id = call_id or f"test-prof-{secrets.token_hex(6)}"
    started = datetime.now(timezone.utc) - timedelta(days=days_ago)
    store = CallStore(dsn())
    try:
        store.write_call(recorder_row(call_id, person, started))
        sink = PostgresSink(store)
        analysis = CallAnalysis(call_id=call_id, topics=tuple(topics), emotion_primary=emotion,
                                behavioral_codes=tuple(codes), facts=tuple(facts), summary=summary)
        utts = [Utterance(call_id, "person", 0, 0.0, 2.0, summary or "hola", 0.9)]
        sink.write_call_analysis(call_id, analysis, summary, utts, weaviate_id, person, observed_at=started,
                                 conversation={"sentiment": sentiment} if sentiment is not None else None)
    finally:
        store.close()
    return call_id


def write_alert(call_id: str, cue: str, severity: str, text: str, *, to_verify: bool = False) -> None:
    from stream_processor.contracts import AlertHit, EvidenceSpan
    from stream_processor.stores.calls_db import CallStore
    from stream_processor.stores.postgres import PostgresSink

    store = CallStore(dsn())
    try:
        PostgresSink(store).write_alert(AlertHit(call_id, cue, severity, EvidenceSpan("person", 3, 10.0, 12.0, text),
                                                 to_verify=to_verify,
                                                 verification="negador dudoso" if to_verify else ""))
    finally:
        store.close()


def store_past(person: str, anchor_call: str, items: list[dict], started: datetime) -> None:
    """The person's relevant past conversations as the stream processor stores them with the
    analysis of ``anchor_call`` (its own SQL; ``person_past_conversations``)."""
    import psycopg
    from psycopg.types.json import Jsonb
    from stream_processor.stores.postgres import _UPSERT_PAST
    from stream_processor.stores.weaviate import conversation_uuid

    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(_UPSERT_PAST, {"person": person, "call_id": anchor_call, "started_at": started,
                                    "weaviate_id": conversation_uuid(anchor_call), "items": Jsonb(items)})
