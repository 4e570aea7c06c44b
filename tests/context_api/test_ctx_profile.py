"""The per-person profile (migration 0008) on the real Postgres: kept current by the database in the
same transaction as the platform's own writes (the recorder's call row, the understanding sink's
analysis and alerts, the agent's saveUserFact), read by getUserContext as one row; recurring topics
and behavioral hints in the context and the brief; the same answer as the fan-out over the base
tables; no write lost when two transactions of one person race; the backfill of people who had
calls before the migration."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from ctxkit import dsn, person_of, query, random_phone, results, tool_call, tool_calls
from profkit import write_alert, write_call

pytestmark = pytest.mark.stack


def _ctx(api, phone: str, **kw) -> dict:
    out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}), **kw)))
    assert "result" in out[0], out[0]
    return json.loads(out[0]["result"])


def _profile(person: str) -> dict | None:
    rows = query("SELECT facts, last_calls, recurring_topics, behavioral_hints, alerts, calls_count "
                 "FROM person_profiles WHERE phone_number_hash = %s", (person,))
    if not rows:
        return None
    names = ("facts", "last_calls", "recurring_topics", "behavioral_hints", "alerts", "calls_count")
    return dict(zip(names, rows[0]))


def _history(person: str) -> list[str]:
    from stream_processor.contracts import UserFact

    return [
        write_call(person, days_ago=10, topics=("familia", "migracion"), codes=("reminiscencia",), emotion="tristeza",
                   summary="Habló de su hijo que se fue al norte; lo extraña."),
        write_call(person, days_ago=7, topics=("familia", "salud"), codes=("reminiscencia", "validacion_emocional"),
                   emotion="alegria", summary="Recordó las fiestas de su pueblo; su hija Rosa la visitó.",
                   facts=(UserFact("family", "daughter_name", "Rosa", 0.8),)),
        # no emotion from the analyzer: the person's final running sentiment says it went badly
        write_call(person, days_ago=4, topics=("migracion",), codes=("echo_open_question",), sentiment=-0.6,
                   summary="Otra vez triste por su hijo en Chicago."),
        write_call(person, days_ago=1, topics=("salud",), summary="Fue al centro de salud por la presión."),
    ]


def test_the_profile_follows_the_platforms_writes_and_feeds_the_context(api):
    phone = random_phone()
    person = person_of(phone)
    assert _profile(person) is None
    calls = _history(person)

    prof = _profile(person)
    assert prof is not None and prof["calls_count"] == 4
    assert [c["call_id"] for c in prof["last_calls"]] == calls[::-1]
    assert {t["topic"]: t["calls"] for t in prof["recurring_topics"]} == {"familia": 2, "migracion": 2, "salud": 2}
    # reminiscencia: in 2 calls, 1 went well; validacion_emocional: 1 of 1; echo_open_question: 0 of 1
    assert [(h["code"], h["good"], h["calls"]) for h in prof["behavioral_hints"]["worked"]] == \
        [("reminiscencia", 1, 2), ("validacion_emocional", 1, 1)]
    # migracion: both calls went badly (one by emotion, one by sentiment); familia 1 of 2: not a majority
    assert [(h["topic"], h["bad"], h["calls"]) for h in prof["behavioral_hints"]["sensitive_topics"]] == \
        [("migracion", 2, 2)]
    assert [f["fact_value"] for f in prof["facts"]] == ["Rosa"]

    # the agent's fact and a live alert land in the profile in their own transaction
    out = results(api.post(tool_calls(phone, tool_call("saveUserFact", {
        "type": "health", "key": "medication", "value": "metformina", "confidence": 0.9}))))
    assert out[0].get("result") == "Dato guardado.", out
    write_alert(calls[-1], "fall", "high", "me resbalé en la regadera")
    prof = _profile(person)
    assert [f["fact_value"] for f in prof["facts"]] == ["metformina", "Rosa"]  # protected first
    assert [a["cue_id"] for a in prof["alerts"]] == ["fall"]

    got = _ctx(api, phone)
    ctx, brief = got["context"], got["brief"]
    assert ctx["known"] and [f["value"] for f in ctx["facts"]] == ["metformina", "Rosa"]
    assert {t["topic"] for t in ctx["recurring_topics"]} == {"familia", "migracion", "salud"}
    assert [h["code"] for h in ctx["behavioral_hints"]["worked"]] == ["reminiscencia", "validacion_emocional"]
    assert [h["topic"] for h in ctx["behavioral_hints"]["sensitive_topics"]] == ["migracion"]
    assert ctx["alerts"][0]["said"] == "me resbalé en la regadera"
    assert [c["call_id"] for c in ctx["last_calls"]] == calls[::-1][:3]  # LUPITA_CONTEXT_API_RECENT_CALLS
    assert "Le ha funcionado: invitarle a recordar su pasado; validar lo que siente." in brief
    assert "Temas con tacto (le afectaron): migración (2 de 2 llamadas)." in brief
    assert "Temas frecuentes: " in brief and "migración (2 llamadas)" in brief
    assert len(brief) <= 1200


def test_the_profile_read_equals_the_fan_out_over_the_base_tables(migrated):
    """The profile is a cache of what the base tables say: both reads give the same snapshot."""
    from context_api.settings import ContextApiSettings
    from context_api.store import Pool
    from context_api.tools import Tools

    person = person_of(random_phone())
    calls = _history(person)
    write_alert(calls[0], "sadness_deep", "medium", "ya no quiero nada", to_verify=True)
    tools = Tools(ContextApiSettings(context_api_assistant_id="t", context_api_bearer_tokens="t",
                                     context_api_alert_days=30), Pool(dsn(), 2, 5000))
    try:
        profile, fanout = tools.read(person, fanout=False), tools.read(person, fanout=True)
    finally:
        tools.pool.close()
    assert profile == fanout
    assert profile.alerts and profile.alerts[0]["to_verify"] is True and len(profile.calls) == 3


def _waiting_on_a_lock(app: str, timeout: float = 30.0) -> None:
    """Until the backend named ``app`` waits on a lock (pg_stat_activity), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                 (app,))[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{app} never waited on a lock")


def test_two_transactions_of_one_person_never_lose_a_write_in_the_profile(migrated):
    """Transaction A writes a call, has its profile refreshed (SET CONSTRAINTS ALL IMMEDIATE: what
    its commit does, migration 0010) and stays open; B writes another call of the same person and
    commits: B's refresh must wait (it takes the person's lock) until A commits, then recompute
    from a snapshot that has A's call. Without the lock B's refresh would not see A's call and,
    writing the row last, would drop it from the profile."""
    person = person_of(random_phone())
    app_b = f"ctx-profile-race-{uuid.uuid4().hex[:8]}"
    insert = ("INSERT INTO companion_calls (call_id, phone_number_hash, recording_status, started_at, summary) "
              "VALUES (%s, %s, 'recorded', now(), %s)")
    a = psycopg.connect(dsn())
    b = psycopg.connect(dsn(), application_name=app_b)
    errors: list[BaseException] = []

    def writer_b() -> None:
        try:
            b.execute(insert, (f"test-race-b-{uuid.uuid4().hex[:8]}", person, "B"))
            b.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        a.execute(insert, (f"test-race-a-{uuid.uuid4().hex[:8]}", person, "A"))
        a.execute("SET CONSTRAINTS ALL IMMEDIATE")
        t = threading.Thread(target=writer_b)
        t.start()
        _waiting_on_a_lock(app_b)
        a.commit()
        t.join(30)
    finally:
        a.close()
        b.close()
    assert not errors, errors
    assert sorted(c["summary"] for c in _profile(person)["last_calls"]) == ["A", "B"]


_XACT_WRITES = ("SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_xact_user_tables "
                "WHERE relname = 'person_profiles' AND schemaname = current_schema()")


def test_a_superseding_fact_write_refreshes_the_profile_once_at_commit(migrated):
    """Migration 0010: the 3-4 statements of a superseding ``facts.record`` (close the old value,
    insert the new one and its observation) mark the person; the profile is refreshed once, at
    commit, writing exactly what one refresh writes (0008 refreshed after each statement); until
    then the transaction still sees the old profile; no mark outlives the transaction."""
    from datetime import datetime, timezone

    from lupita import facts

    person = person_of(random_phone())

    def obs(value: str) -> facts.Observation:
        return facts.Observation(fact_type="routine", key="wake_up_time", value=value, confidence=0.7,
                                 observed_at=datetime.now(timezone.utc), source="agent")

    def values(conn) -> list[str]:
        row = conn.execute("SELECT facts FROM person_profiles WHERE phone_number_hash = %s", (person,)).fetchone()
        return [f["fact_value"] for f in row[0]] if row else []

    def writes(conn) -> tuple[int, ...]:
        # this backend's counts not yet flushed to the shared statistics: only a difference taken
        # inside one transaction is that transaction's own
        return tuple(conn.execute(_XACT_WRITES).fetchone())

    def delta(after: tuple[int, ...], before: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(a - b for a, b in zip(after, before))

    with psycopg.connect(dsn()) as conn:
        facts.record(conn, person, obs("06:00"))
        conn.commit()
        before = writes(conn)
        conn.execute("SELECT lupita_profile_refresh(%s, 'facts')", (person,))
        one_refresh = delta(writes(conn), before)
        conn.commit()
        assert sum(one_refresh) >= 1
        before = writes(conn)
        facts.record(conn, person, obs("07:00"))
        assert values(conn) == ["06:00"]  # not refreshed before commit
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # what the commit runs
        assert delta(writes(conn), before) == one_refresh
        assert values(conn) == ["07:00"]
        conn.commit()
    assert [f["fact_value"] for f in _profile(person)["facts"]] == ["07:00"]
    assert query("SELECT count(*) FROM person_profile_pending") == [(0,)]


def test_a_rolled_back_write_leaves_no_mark_and_the_profile_as_it_was(migrated):
    person = person_of(random_phone())
    insert = ("INSERT INTO companion_calls (call_id, phone_number_hash, recording_status, started_at, summary) "
              "VALUES (%s, %s, 'recorded', now(), %s)")
    with psycopg.connect(dsn()) as conn:
        conn.execute(insert, (f"test-once-{uuid.uuid4().hex[:8]}", person, "kept"))
        conn.commit()
        conn.execute(insert, (f"test-once-{uuid.uuid4().hex[:8]}", person, "rolled back"))
        assert conn.execute("SELECT count(*) FROM person_profile_pending").fetchone() == (1,)
        conn.rollback()
        conn.execute(insert, (f"test-once-{uuid.uuid4().hex[:8]}", person, "second"))
        conn.commit()
    assert sorted(c["summary"] for c in _profile(person)["last_calls"]) == ["kept", "second"]
    assert query("SELECT count(*) FROM person_profile_pending") == [(0,)]


def test_the_migration_gives_people_with_earlier_calls_a_profile(migrated, tmp_path: Path):
    """Backfill: a schema migrated up to 0007 with a person's calls, facts and alerts gets, when 0008
    is applied, that person's profile; the person without anything gets none."""
    from lupita.db import MIGRATIONS_DIR, migrate

    before = tmp_path / "before"
    before.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if f.name < "0008":
            shutil.copy(f, before / f.name)
    schema = f"test_ctx_backfill_{uuid.uuid4().hex[:8]}"
    scoped = psycopg.conninfo.make_conninfo(dsn(), options=f"-c search_path={schema}")
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        migrate(scoped, before)
        with psycopg.connect(scoped, autocommit=True) as conn:
            conn.execute("INSERT INTO companion_calls (call_id, phone_number_hash, recording_status, started_at, "
                         "summary, topics, emotion_primary, behavioral_codes_triggered) VALUES "
                         "('old-1', 'p1', 'recorded', now() - interval '9 days', 'uno', '[\"campo\"]', 'alegria', "
                         "'[\"reminiscencia\"]'), "
                         "('old-2', 'p1', 'recorded', now() - interval '2 days', 'dos', '[\"campo\"]', NULL, '[]')")
            conn.execute("INSERT INTO call_alerts (call_id, cue_id, severity, evidence) VALUES "
                         "('old-2', 'fall', 'high', '{\"text\": \"me caí\"}')")
            conn.execute("INSERT INTO user_facts (phone_number_hash, fact_type, fact_key, fact_value, confidence) "
                         "VALUES ('p1', 'pet', 'pet_name.rocky', 'Rocky', 0.9), ('p2', 'other', 'x', 'y', 0.5)")
            conn.execute("UPDATE user_facts SET status = 'superseded', is_active = false, expired_at = now(), "
                         "valid_to = now(), superseded_at = now() WHERE phone_number_hash = 'p2'")
        assert migrate(scoped)[:1] == ["0008_person_profiles.sql"]  # and the later ones
        with psycopg.connect(scoped) as conn:
            rows = conn.execute("SELECT phone_number_hash, last_calls, facts, recurring_topics, behavioral_hints, "
                                "alerts FROM person_profiles ORDER BY 1").fetchall()
    finally:
        with psycopg.connect(dsn(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    assert [r[0] for r in rows] == ["p1"]  # p2 has no calls and no live fact
    _, last_calls, facts, topics, hints, alerts = rows[0]
    assert [c["summary"] for c in last_calls] == ["dos", "uno"]
    assert [f["fact_value"] for f in facts] == ["Rocky"]
    assert topics == [{"topic": "campo", "calls": 2, "last_at": last_calls[0]["started_at"]}]
    assert hints["worked"] == [{"code": "reminiscencia", "calls": 1, "good": 1}]
    assert [a["cue_id"] for a in alerts] == ["fall"]
