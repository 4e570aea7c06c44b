"""Least-privilege Postgres roles (migration 0009) on the stack's Postgres, in a schema of its own
migrated from 0001: the platform's own code runs under each service's role — the recorder and the
understanding sink as ``lupita_processor``; the context read, saveUserFact, scheduleCallback and an
erasure as ``lupita_context_api`` (``options=-c role=…`` in the DSN) — and what a role has no
business doing is refused by the database; the schema's objects belong to ``lupita_owner``."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from ctxkit import dsn

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def schema(migrated):
    from lupita.db import migrate

    name = f"test_ctx_roles_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        migrate(psycopg.conninfo.make_conninfo(dsn(), options=f"-c search_path={name}"))
        yield name
    finally:
        with psycopg.connect(dsn(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def as_role(schema: str, role: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn(), options=f"-c search_path={schema} -c role={role}")


def refused(conninfo: str, *statements: str) -> list[str]:
    """The statements the database refused for lack of privilege (each in its own transaction)."""
    out = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for sql in statements:
            try:
                conn.execute(sql)
            except psycopg.errors.InsufficientPrivilege:
                out.append(sql)
    return out


def test_each_service_works_under_its_role_and_nothing_more(schema):
    from context_api.erasure import Eraser, Report
    from context_api.settings import ContextApiSettings
    from context_api.store import Pool, schedule_callback
    from context_api.tools import Tools
    from lupita import facts
    from profkit import recorder_row
    from stream_processor.contracts import AlertHit, CallAnalysis, EvidenceSpan, Utterance, UserFact
    from stream_processor.stores.calls_db import CallStore
    from stream_processor.stores.postgres import PostgresSink

    person, call_id = secrets.token_hex(32), f"test-roles-{secrets.token_hex(5)}"
    wid = uuid.uuid5(uuid.NAMESPACE_URL, call_id)
    now = datetime.now(timezone.utc)
    proc, api = as_role(schema, "lupita_processor"), as_role(schema, "lupita_context_api")

    # the stream processor: the recorder's row, the analysis with a fact, a live alert (and the profile triggers)
    store = CallStore(proc)
    try:
        store.write_call(recorder_row(call_id, person, now - timedelta(hours=1)))
        sink = PostgresSink(store)
        wrote = sink.write_call_analysis(
            call_id, CallAnalysis(call_id, ("salud",), "alegria", facts=(UserFact("health", "medication", "metformina", 0.9),),
                                  summary="Habló de su presión."),
            "hola", [Utterance(call_id, "person", 0, 0.0, 1.0, "hola", 0.9)], wid, person,
            past=[{"call_id": call_id, "weaviate_id": str(wid), "phone_number_hash": person, "summary": "presión",
                   "topics": ["salud"], "emotion": "", "started_at": now.isoformat(), "distance": 0.0}])
        assert wrote.facts == {"inserted": 1}
        assert sink.write_alert(AlertHit(call_id, "fall", "high", EvidenceSpan("person", 0, 0.0, 1.0, "me caí")))
    finally:
        store.close()
    assert refused(proc, "DELETE FROM person_past_conversations") == ["DELETE FROM person_past_conversations"]
    assert refused(proc, "DELETE FROM user_facts", "DELETE FROM companion_calls", "SELECT * FROM scheduled_callbacks",
                   "INSERT INTO vapi_calls (vapi_call_id) VALUES ('x')", "SELECT * FROM erasures",
                   "SELECT * FROM schema_migrations", "CREATE TABLE nope (a int)") == [
        "DELETE FROM user_facts", "DELETE FROM companion_calls", "SELECT * FROM scheduled_callbacks",
        "INSERT INTO vapi_calls (vapi_call_id) VALUES ('x')", "SELECT * FROM erasures",
        "SELECT * FROM schema_migrations", "CREATE TABLE nope (a int)"]

    # the context API: the context (profile), a fact, a callback, then the person's erasure
    pool = Pool(api, 2, 5000)
    try:
        tools = Tools(ContextApiSettings(context_api_assistant_id="t", context_api_bearer_tokens="t"), pool)
        ctx, brief = tools.context(person)
        assert ctx["known"] and [a["cue"] for a in ctx["alerts"]] == ["fall"] and "metformina" in brief
        with pool.connection(5) as conn:
            assert facts.record(conn, person, facts.Observation(
                fact_type="family", key="daughter_name", value="Rosa", confidence=0.8, observed_at=now,
                source="agent")).outcome == facts.INSERTED
            assert schedule_callback(conn, person=person, when=now + timedelta(days=1), reason="presión",
                                     call_id=None, window=timedelta(minutes=30))[0]
        bad = ["INSERT INTO call_alerts (call_id, cue_id, severity, evidence) VALUES ('x', 'x', 'high', '{}')",
               "UPDATE call_alerts SET severity = 'low'", "UPDATE companion_calls SET started_at = now()",
               "INSERT INTO companion_calls (call_id, recording_status) VALUES ('x', 'pending')",
               "INSERT INTO call_utterances (call_id, leg, seq, start_s, end_s, text) VALUES ('x', 'person', 0, 0, 1, 'x')",
               "SELECT * FROM schema_migrations", "CREATE TABLE nope (a int)",
               "UPDATE person_past_conversations SET items = '[]'",
               "INSERT INTO person_past_conversations (phone_number_hash, anchor_call_id, anchor_weaviate_id, "
               "anchor_started_at, items) VALUES ('x', 'x', gen_random_uuid(), now(), '[]')"]
        assert refused(api, *bad) == bad
        with pool.connection(5) as conn:
            report = Report()
            Eraser._postgres(conn, person, [call_id], [call_id], report)  # the call's recording kept by law: a stub
    finally:
        pool.close()
    assert report.removed["user_facts"] == 2 and report.removed["scheduled_callbacks"] == 1
    assert report.removed["companion_calls_reduced_to_stub"] == 1 and report.removed["person_profiles"] == 1
    assert report.removed["person_past_conversations"] == 1  # written by the processor, read and erased by the API

    with psycopg.connect(as_role(schema, "lupita_owner")) as conn:
        owners = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    assert owners == [("lupita_owner",)]
