"""PostgresSink against the real Postgres of the local stack (migrations applied by
lupita.db.migrate): call analysis, utterances, facts, alerts; idempotent replays; the
recorder's upsert and the sink's never clobber each other; retries of a closed port."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from prometheus_client import REGISTRY

from stream_processor.stores import (
    InvalidSinkInput,
    PostgresSink,
    RetryPolicy,
    SinkRejected,
    SinkUnavailable,
    conversation_uuid,
    retry_call,
)
from stream_processor.stores import postgres as postgres_sink
from stream_processor.contracts import AlertHit, CallAnalysis, EvidenceSpan, UserFact, Utterance

pytestmark = pytest.mark.stack

T0 = datetime(2026, 1, 24, 16, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def dsn(stack_env) -> str:
    from lupita.config import CommonSettings
    from lupita.db import migrate

    dsn = CommonSettings().postgres_dsn.get_secret_value()
    migrate(dsn)
    return dsn


class Cleanup:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hashes: list[str] = []

    def call(self) -> str:
        cid = f"test-sinks-{uuid.uuid4().hex[:12]}"
        self.calls.append(cid)
        return cid

    def person(self) -> str:
        h = uuid.uuid4().hex + uuid.uuid4().hex  # a stand-in for the keyed hash (64 hex)
        self.hashes.append(h)
        return h


@pytest.fixture(scope="module")
def made(dsn):
    c = Cleanup()
    yield c
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM user_facts WHERE phone_number_hash = ANY(%s)", (c.hashes,))
        conn.execute("DELETE FROM call_alerts WHERE call_id = ANY(%s)", (c.calls,))
        conn.execute("DELETE FROM consent_records WHERE call_id = ANY(%s)", (c.calls,))
        conn.execute("DELETE FROM companion_calls WHERE call_id = ANY(%s)", (c.calls,))  # cascades utterances


@pytest.fixture(scope="module")
def db(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def sink(dsn):
    s = PostgresSink.connect(dsn, policy=RetryPolicy(max_attempts=3, initial_delay_s=0.05, max_elapsed_s=5))
    yield s
    s.close()


def utterances(call_id: str, n: int = 3) -> list[Utterance]:
    lines = [
        ("lupita", 0, 0.0, 2.1, "Hola doña Carmen, ¿cómo amaneció hoy?", 1.0),
        ("person", 0, 2.5, 6.0, "Bien, mija. Ya me tomé la metformina.", 0.91),
        ("person", 1, 6.4, 9.8, "Mi hija Rosa viene el domingo.", 0.87),
        ("lupita", 1, 10.0, 12.0, "¡Qué bonito!", 1.0),
    ]
    return [Utterance(call_id, *line) for line in lines[:n]]


def analysis(call_id: str, *facts: UserFact, summary: str = "Carmen está bien; tomó su medicina.") -> CallAnalysis:
    return CallAnalysis(
        call_id=call_id,
        topics=("salud", "familia"),
        emotion_primary="positive",
        emotion_trend=((2.5, "positive"), (6.4, "positive")),
        behavioral_codes=("echo_open_question",),
        facts=facts,
        summary=summary,
        analyzer="local",
    )


def fact(key: str, value: str, conf: float = 0.8, fact_type: str = "health") -> UserFact:
    return UserFact(fact_type, key, value, conf, EvidenceSpan("person", 0, 2.5, 6.0, value, 0, len(value)))


def snapshot(db, call_id: str, person: str) -> dict:
    """Every row the sink may touch for this call / person, with xmin (changes on any rewrite)."""
    q = lambda sql, *a: [tuple(r) for r in db.execute(sql, a).fetchall()]  # noqa: E731
    return {
        "call": q("SELECT xmin::text, * FROM companion_calls WHERE call_id = %s", call_id),
        "utterances": q("SELECT xmin::text, * FROM call_utterances WHERE call_id = %s ORDER BY leg, seq", call_id),
        "facts": q("SELECT xmin::text, * FROM user_facts WHERE phone_number_hash = %s ORDER BY id", person),
    }


def facts_of(db, person: str):
    return db.execute(
        "SELECT fact_key, fact_value, confidence, source_call_id, is_active, valid_from, observed_at, expired_at "
        "FROM user_facts WHERE phone_number_hash = %s ORDER BY id",
        (person,),
    ).fetchall()


def test_migration_0002_is_applied_and_recorded(db):
    versions = {r[0] for r in db.execute("SELECT version FROM schema_migrations").fetchall()}
    assert {1, 2} <= versions
    cols = {
        r[0] for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'companion_calls'"
        ).fetchall()
    }
    assert {"processed_at", "analysis", "weaviate_id", "summary", "topics", "transcript"} <= cols
    tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert {"user_facts", "scheduled_callbacks", "call_utterances", "call_alerts"} <= tables


def test_write_call_analysis_stores_row_utterances_and_facts(sink, db, made):
    call_id, person = made.call(), made.person()
    utts = utterances(call_id)
    wid = conversation_uuid(call_id)
    result = sink.write_call_analysis(
        call_id, analysis(call_id, fact("medication.metformina", "metformina"),
                          fact("daughter_name.rosa", "Rosa", 0.7, "family")),
        "transcript text", utts, wid, person, observed_at=T0,
    )
    assert result.call_row == "inserted" and result.utterances_written == 3
    assert result.facts == {"inserted": 2} and result.changed

    row = db.execute(
        "SELECT recording_status, phone_number_hash, weaviate_id, summary, topics, emotion_primary, "
        "behavioral_codes_triggered, transcript, analysis, processed_at FROM companion_calls WHERE call_id = %s",
        (call_id,),
    ).fetchone()
    status, h, weaviate_id, summary, topics, emotion, codes, transcript, doc, processed_at = row
    assert status == "pending"  # the recorder has not written this call yet
    assert h == person and weaviate_id == wid and transcript == "transcript text"
    assert summary.startswith("Carmen") and topics == ["salud", "familia"] and codes == ["echo_open_question"]
    assert emotion == "positive" and processed_at is not None
    assert doc["analyzer"] == "local" and doc["emotion_trend"][1] == {"start_s": 6.4, "emotion": "positive"}

    stored = db.execute(
        "SELECT leg, seq, start_s, end_s, text, confidence FROM call_utterances WHERE call_id = %s ORDER BY start_s",
        (call_id,),
    ).fetchall()
    assert stored == [(u.leg, u.seq, u.start_s, u.end_s, u.text, u.confidence) for u in utts]

    facts = facts_of(db, person)
    assert [(f[0], f[1], f[3], f[4], f[5], f[6], f[7]) for f in facts] == [
        ("medication.metformina", "metformina", call_id, True, T0, T0, None),
        ("daughter_name.rosa", "Rosa", call_id, True, T0, T0, None),
    ]
    evidence = db.execute(
        "SELECT evidence FROM user_facts WHERE phone_number_hash = %s AND fact_key = 'medication.metformina'",
        (person,)
    ).fetchone()[0]
    assert evidence == {"leg": "person", "seq": 0, "start_s": 2.5, "end_s": 6.0, "text": "metformina",
                        "char_start": 0, "char_end": 10}


def test_the_same_write_twice_changes_nothing(sink, db, made):
    call_id, person = made.call(), made.person()
    args = (call_id, analysis(call_id, fact("medication", "metformina")), "t", utterances(call_id),
            conversation_uuid(call_id), person)
    sink.write_call_analysis(*args, observed_at=T0)
    before = snapshot(db, call_id, person)
    again = sink.write_call_analysis(*args, observed_at=T0)
    assert again.call_row == "unchanged" and again.utterances_written == 0 and again.utterances_deleted == 0
    assert again.facts == {"unchanged": 1} and not again.changed
    assert snapshot(db, call_id, person) == before  # same rows, same values, not even rewritten
    # without an explicit observation time the call row's own time is used, stable across replays
    third = sink.write_call_analysis(*args)
    assert not third.changed and snapshot(db, call_id, person) == before


def test_replay_with_fewer_utterances_deletes_the_stale_ones(sink, db, made):
    call_id, person = made.call(), made.person()
    a = analysis(call_id)
    sink.write_call_analysis(call_id, a, "t", utterances(call_id, 4), None, person)
    revised = utterances(call_id, 2)
    revised[1] = Utterance(call_id, "person", 0, 2.5, 6.2, "Bien, mija. Ya me tomé la metformina hoy.", 0.95)
    result = sink.write_call_analysis(call_id, a, "t", revised, None, person)
    assert result.utterances_deleted == 2 and result.utterances_written == 1
    rows = db.execute(
        "SELECT leg, seq, end_s, text FROM call_utterances WHERE call_id = %s ORDER BY leg, seq", (call_id,)
    ).fetchall()
    assert rows == [("lupita", 0, 2.1, "Hola doña Carmen, ¿cómo amaneció hoy?"),
                    ("person", 0, 6.2, "Bien, mija. Ya me tomé la metformina hoy.")]
    assert sink.write_call_analysis(call_id, a, "t", [], None, person).utterances_deleted == 2
    assert db.execute("SELECT count(*) FROM call_utterances WHERE call_id = %s", (call_id,)).fetchone()[0] == 0


def test_a_new_value_expires_the_old_fact_and_old_calls_cannot_bring_it_back(sink, db, made):
    person = made.person()
    first, second, third = made.call(), made.call(), made.call()
    t1, t2, t3 = T0, T0 + timedelta(days=7), T0 + timedelta(days=14)
    sink.write_call_analysis(first, analysis(first, fact("wake_up_time", "6 am", 0.7, "routine")), "t", [], None, person,
                             observed_at=t1)
    r2 = sink.write_call_analysis(second, analysis(second, fact("wake_up_time", "7 am", 0.9, "routine")), "t", [], None,
                                  person, observed_at=t2)
    assert r2.facts == {"superseded": 1}
    rows = facts_of(db, person)
    assert [(r[1], r[3], r[4], r[5], r[6], r[7]) for r in rows] == [
        ("6 am", first, False, t1, t1, t2),  # expired when the new value was observed
        ("7 am", second, True, t2, t2, None),
    ]
    # replaying the first (older) call changes nothing: its value is outdated
    replay = sink.write_call_analysis(first, analysis(first, fact("wake_up_time", "6 am", 0.7, "routine")), "t", [], None,
                                      person, observed_at=t1)
    assert replay.facts == {"stale": 1}
    assert facts_of(db, person) == rows
    # a later call seeing the same value confirms it in place: no new row; two independent
    # observations (0.9, 0.95) combine to 1 - 0.1 * 0.05 (lupita.facts)
    r3 = sink.write_call_analysis(third, analysis(third, fact("wake_up_time", "7 am", 0.95, "routine")), "t", [], None,
                                  person, observed_at=t3)
    assert r3.facts == {"confirmed": 1}
    rows = facts_of(db, person)
    assert len(rows) == 2
    assert [(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows if r[4]] == [("7 am", 0.995, third, True, t2, t3)]
    one_active = db.execute(
        "SELECT count(*) FROM user_facts WHERE phone_number_hash = %s AND fact_key = 'wake_up_time' AND is_active",
        (person,),
    ).fetchone()[0]
    assert one_active == 1


def test_a_replay_of_the_confirming_call_may_revise_its_own_fact(sink, db, made):
    person, call_id = made.person(), made.call()
    sink.write_call_analysis(call_id, analysis(call_id, fact("wake_up_time", "6 am", 0.6, "routine")), "t", [],
                             None, person, observed_at=T0)
    # an improved model replays the call and hears another time
    r = sink.write_call_analysis(call_id, analysis(call_id, fact("wake_up_time", "6:30 am", 0.8, "routine")), "t",
                                 [], None, person, observed_at=T0)
    assert r.facts == {"superseded": 1}
    assert [(x[1], x[4]) for x in facts_of(db, person)] == [("6 am", False), ("6:30 am", True)]


def test_concurrent_writers_of_one_person_keep_one_active_fact(dsn, db, made):
    person = made.person()
    calls = [made.call() for _ in range(4)]
    sinks = [PostgresSink.connect(dsn) for _ in calls]
    for s in sinks:
        s.ping()  # connected before the race starts
    keys = [f"medication_{i}" for i in range(20)]  # longer transactions: more overlap
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def write(sink: PostgresSink, call_id: str) -> None:
        try:
            barrier.wait(timeout=10)
            sink.write_call_analysis(call_id, analysis(call_id, *(fact(k, "losartán") for k in keys)), "t", [],
                                     None, person, observed_at=T0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, c)) for s, c in zip(sinks, calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for s in sinks:
        s.close()
    assert errors == []
    rows = facts_of(db, person)
    assert len(rows) == len(keys) and all(r[1] == "losartán" and r[4] is True for r in rows)


def test_recorder_upsert_after_the_sink_keeps_the_analysis(sink, db, made, dsn):
    from stream_processor.stores.calls_db import CallRow, CallStore

    call_id, person = made.call(), made.person()
    sink.write_call_analysis(call_id, analysis(call_id, fact("medication", "metformina")), "t",
                             utterances(call_id), conversation_uuid(call_id), person)
    before = db.execute(
        "SELECT weaviate_id, summary, topics, emotion_primary, behavioral_codes_triggered, transcript, analysis, "
        "processed_at FROM companion_calls WHERE call_id = %s", (call_id,),
    ).fetchone()
    store = CallStore(dsn)
    try:
        store.write_call(CallRow(
            call_id=call_id, phone_encrypted=b"\x00" * 40, phone_number_hash=person, region="oaxaca",
            direction="outbound", recording_consent=True, consent_source="ivr",
            s3_legal_key=f"calls/2026/01/24/{call_id}/audio-full.wav",
            s3_active_key=f"calls/2026/01/24/{call_id}/audio-full.wav",
            s3_metadata_key=f"calls/2026/01/24/{call_id}/metadata.json", recording_status="recorded",
            recording_skipped_reason=None, started_at=T0, ended_at=T0 + timedelta(minutes=5),
            duration_seconds=300.0, end_reason="hangup",
        ))
    finally:
        store.close()
    after = db.execute(
        "SELECT weaviate_id, summary, topics, emotion_primary, behavioral_codes_triggered, transcript, analysis, "
        "processed_at FROM companion_calls WHERE call_id = %s", (call_id,),
    ).fetchone()
    assert after == before
    status, started = db.execute(
        "SELECT recording_status, started_at FROM companion_calls WHERE call_id = %s", (call_id,)
    ).fetchone()
    assert status == "recorded" and started == T0
    assert db.execute("SELECT count(*) FROM call_utterances WHERE call_id = %s", (call_id,)).fetchone()[0] == 3


def test_sink_after_the_recorder_keeps_the_recording_columns(sink, db, made, dsn):
    from stream_processor.stores.calls_db import CallRow, CallStore

    call_id, person = made.call(), made.person()
    store = CallStore(dsn)
    try:
        store.write_call(CallRow(
            call_id=call_id, phone_encrypted=b"\x01" * 40, phone_number_hash=person, region="oaxaca",
            direction="outbound", recording_consent=True, consent_source="ivr",
            s3_legal_key="calls/k.wav", s3_active_key="calls/k.wav", s3_metadata_key="calls/m.json",
            recording_status="recorded", recording_skipped_reason=None, started_at=T0, ended_at=None,
            duration_seconds=None, end_reason=None,
        ))
    finally:
        store.close()
    cols = "phone_encrypted, phone_number_hash, region, s3_legal_key, recording_status, started_at"
    before = db.execute(f"SELECT {cols} FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    # no phone hash given to the sink: the recorder's is used for the facts, and kept
    r = sink.write_call_analysis(call_id, analysis(call_id, fact("medication", "metformina")), "t", [], None, None)
    assert r.call_row == "updated" and r.facts == {"inserted": 1}
    assert db.execute(f"SELECT {cols} FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone() == before
    # the facts are dated by the call's start when no observation time is given
    assert facts_of(db, person)[0][5] == T0


def test_facts_without_a_known_person_are_skipped(sink, db, made):
    call_id = made.call()
    r = sink.write_call_analysis(call_id, analysis(call_id, fact("medication", "metformina")), "t", [], None, None)
    assert r.facts == {} and r.facts_skipped_no_person == 1
    assert db.execute("SELECT count(*) FROM user_facts WHERE source_call_id = %s", (call_id,)).fetchone()[0] == 0


def test_an_alert_is_stored_once(sink, db, made):
    call_id = made.call()
    first = AlertHit(call_id, "fall", "high", EvidenceSpan("person", 3, 20.0, 23.5, "me caí en el baño", 0, 7))
    assert sink.write_alert(first, raised_at=T0) is True
    again = AlertHit(call_id, "fall", "critical", EvidenceSpan("person", 5, 40.0, 41.0, "me volví a caer"))
    assert sink.write_alert(again) is False
    assert sink.write_alert(first, raised_at=T0) is False
    rows = db.execute("SELECT cue_id, severity, evidence, raised_at FROM call_alerts WHERE call_id = %s",
                      (call_id,)).fetchall()
    assert rows == [("fall", "high", {"leg": "person", "seq": 3, "start_s": 20.0, "end_s": 23.5,
                                      "text": "me caí en el baño", "char_start": 0, "char_end": 7}, T0)]
    other = AlertHit(call_id, "chest_pain", "critical", EvidenceSpan("person", 4, 30.0, 32.0, "me duele el pecho"))
    assert sink.write_alert(other) is True
    assert db.execute("SELECT count(*) FROM call_alerts WHERE call_id = %s", (call_id,)).fetchone()[0] == 2


def test_an_alert_to_verify_is_stored_as_one_with_its_reason(sink, db, made):
    call_id = made.call()
    doubtful = AlertHit(call_id, "fall", "critical", EvidenceSpan("person", 2, 8.0, 10.0, "no me caí anoche"),
                        to_verify=True, verification="negator 'no' doubtful (word probability 0.08)")
    sure = AlertHit(call_id, "chest_pain", "critical", EvidenceSpan("person", 3, 11.0, 12.0, "me duele el pecho"),
                    verification="ignored: not to verify")
    assert sink.write_alert(doubtful) is True and sink.write_alert(sure) is True
    rows = db.execute("SELECT cue_id, to_verify, verification FROM call_alerts WHERE call_id = %s ORDER BY cue_id",
                      (call_id,)).fetchall()
    assert rows == [("chest_pain", False, None), ("fall", True, "negator 'no' doubtful (word probability 0.08)")]


def test_scheduled_callbacks_refuse_the_same_pending_callback_twice(db, made):
    person = made.person()
    insert = ("INSERT INTO scheduled_callbacks (phone_number_hash, call_id, scheduled_for, reason) "
              "VALUES (%s, NULL, %s, 'seguimiento') ON CONFLICT DO NOTHING")
    db.execute(insert, (person, T0))
    db.execute(insert, (person, T0))
    try:
        rows = db.execute("SELECT status FROM scheduled_callbacks WHERE phone_number_hash = %s", (person,)).fetchall()
        assert rows == [("pending",)]
    finally:
        db.execute("DELETE FROM scheduled_callbacks WHERE phone_number_hash = %s", (person,))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retries(operation: str) -> float:
    return REGISTRY.get_sample_value(
        "lupita_sink_retries_total", {"store": "postgres", "operation": operation}
    ) or 0.0


def test_a_closed_port_is_retried_then_reported_clearly():
    sink = PostgresSink.connect(
        f"postgresql://lupita@127.0.0.1:{closed_port()}/lupita", connect_timeout=2,
        policy=RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02, max_elapsed_s=10),
    )
    seen: list[int] = []
    before = _retries("write_alert")
    hit = AlertHit("test-sinks-down", "fall", "high", EvidenceSpan("person", 0, 0.0, 1.0, "me caí"))
    with pytest.raises(SinkUnavailable) as info:
        sink.write_alert(hit, on_retry=lambda n, delay, exc: seen.append(n))
    sink.close()
    err = info.value
    assert seen == [1, 2] and err.attempts == 3 and err.store == "postgres"
    assert isinstance(err.__cause__, psycopg.OperationalError)
    assert "postgres write_alert: still failing after 3 attempt(s)" in str(err)
    assert _retries("write_alert") - before == 2


def test_a_constraint_violation_is_rejected_without_retry(db):
    attempts = []

    def violate():
        attempts.append(1)
        db.execute(
            "INSERT INTO call_alerts (call_id, cue_id, severity, evidence) VALUES ('x', 'fall', 'urgent', '{}')"
        )

    with pytest.raises(SinkRejected) as info:
        retry_call(violate, policy=RetryPolicy(max_attempts=5, initial_delay_s=0.01), store="postgres",
                   operation="probe", is_transient=postgres_sink.is_transient)
    assert len(attempts) == 1
    assert isinstance(info.value.__cause__, psycopg.errors.CheckViolation)
    assert not isinstance(info.value, InvalidSinkInput)


def test_past_conversations_of_another_person_or_without_the_call_object_are_refused(sink, db, made):
    """The nearest calls stored with an analysis are the person's own, about a call with a Weaviate
    object: anything else is a bad record (refused before any write), never stored."""
    call_id, person = made.call(), made.person()
    wid = conversation_uuid(call_id)
    mine = {"call_id": call_id, "weaviate_id": str(wid), "phone_number_hash": person, "summary": "s",
            "topics": [], "emotion": "", "started_at": T0.isoformat(), "distance": 0.0}
    for past, w, why in (([mine, dict(mine, phone_number_hash=made.person())], wid, "person's own calls"),
                         ([mine], None, "needs the call's weaviate_id")):
        with pytest.raises(InvalidSinkInput, match=why):
            sink.write_call_analysis(call_id, analysis(call_id), "t", utterances(call_id), w, person,
                                     observed_at=T0, past=past)
        assert db.execute("SELECT count(*) FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()[0] == 0
    row = "SELECT xmin::text, anchor_call_id, items FROM person_past_conversations WHERE phone_number_hash = %s"
    seen = []
    for _ in range(2):  # the same write again rewrites nothing (same row version)
        sink.write_call_analysis(call_id, analysis(call_id), "t", utterances(call_id), wid, person, observed_at=T0,
                                 past=[mine])
        seen.append(db.execute(row, (person,)).fetchone())
    assert seen[0][1:] == (call_id, [mine]) and seen[1] == seen[0]
