"""The fact store (lupita.facts) on the stack's real Postgres, in a schema of its own made by the
migrations from scratch (0001..0005): supersede, multi-valued keys, retraction, protected facts
that the analyzer alone only questions, repetition raising count and confidence, provenance,
replays, isolation, and concurrent writers held to one current row by the database."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from lupita import facts
from lupita.facts import Observation

pytestmark = pytest.mark.stack

T0 = datetime(2026, 3, 2, 17, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def dsn(stack_env) -> str:
    """A fresh schema, migrated from 0001, dropped afterwards (the shared schema is not touched)."""
    from lupita.config import CommonSettings
    from lupita.db import migrate

    base = CommonSettings().postgres_dsn.get_secret_value()
    schema = f"test_facts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = psycopg.conninfo.make_conninfo(base, options=f"-c search_path={schema}")
    try:
        migrate(scoped)
        yield scoped
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def db(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def person() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex  # stands in for the keyed hash (64 hex)


def obs(key: str, value: str, conf: float = 0.8, *, t: datetime = T0, source: str = "analysis",
        call: str | None = None, fact_type: str = "health", **kw) -> Observation:
    return Observation(fact_type=fact_type, key=key, value=value, confidence=conf, observed_at=t, source=source,
                       call_id=call if call is not None else f"call-{uuid.uuid4().hex[:8]}", **kw)


def rows(db, who: str, key_like: str = "%") -> list[dict]:
    from psycopg.rows import dict_row

    return db.cursor(row_factory=dict_row).execute(
        "SELECT id, fact_key, fact_value, status, is_active, confidence, observation_count, valid_from, valid_to, "
        "expired_at, recorded_at, superseded_at, superseded_by, source, source_call_id, first_call_id, "
        "asr_confidence, proposal, conflicts_with, protected, multi_valued, closed_by_source "
        "FROM user_facts WHERE phone_number_hash = %s AND fact_key LIKE %s ORDER BY id", (who, key_like)).fetchall()


def current(db, who: str) -> list[tuple[str, str]]:
    return [(r["fact_key"], r["fact_value"]) for r in rows(db, who) if r["status"] == "current"]


# --------------------------------------------------------------------------- pure


def test_keys_are_canonical_like_the_analyzers():
    from stream_processor.models.analyzer.facts import MULTI_VALUED, MULTI_VALUED_SUFFIXES, fact_key
    from stream_processor.models.analyzer.facts import slug as analyzer_slug

    from stream_processor.models.analyzer.schema import FACT_TYPES, KEY_PATTERN

    assert (facts.FACT_TYPES, facts.KEY_PATTERN) == (FACT_TYPES, KEY_PATTERN)
    assert MULTI_VALUED <= facts.MULTI_VALUED_BASES
    assert set(MULTI_VALUED_SUFFIXES) <= set(facts.MULTI_VALUED_SUFFIXES)
    for value in ("Metformina", "Café de olla", "losartán 50 mg", "Ñandú", "  ", "Rosa María"):
        assert facts.slug(value) == analyzer_slug(value)
    for key, value in (("medication", "Metformina"), ("daughter_name", "Rosa"), ("wake_up_time", "6 am"),
                       ("likes", "el café"), ("son_lives_in", "Chicago")):
        assert facts.canonical_key(key, value) == fact_key(key, value)
    assert facts.canonical_key("medication.metformina", "metformina 850") == "medication.metformina"
    assert facts.canonical_key("son_lives_in", "Chicago") == "son_lives_in.chicago"  # an agent's write meets the analyzer's
    assert facts.is_protected("medication.metformina") and facts.is_protected("allergy")
    assert facts.is_protected("emergency_contact_name.rosa") and facts.is_protected("diagnosis")
    assert not facts.is_protected("wake_up_time") and not facts.is_protected("daughter_name.rosa")


def test_repetition_combines_confidence():
    assert facts.combined_confidence([0.8]) == 0.8
    assert facts.combined_confidence([0.5, 0.5]) == 0.75
    assert facts.combined_confidence([0.7, 0.9, 1.0]) == 1.0


@pytest.mark.parametrize("bad, field", [
    (dict(value=""), "value"), (dict(value="x" * 1001), "value"), (dict(value="a\x00b"), "value"),
    (dict(confidence=1.5), "confidence"), (dict(confidence=float("nan")), "confidence"),
    (dict(confidence=True), "confidence"), (dict(source="robot"), "source"), (dict(key=" "), "key"),
    (dict(observed_at=datetime(2026, 3, 2)), "observed_at"),
    (dict(valid_from=T0 + timedelta(days=1)), "valid_from"), (dict(asr_confidence=-0.1), "asr_confidence"),
])
def test_bad_input_is_refused_and_nothing_written(db, bad, field):
    who = person()
    good = dict(fact_type="routine", key="wake_up_time", value="6 am", confidence=0.8, observed_at=T0)
    with pytest.raises(facts.FactInputError, match=field):
        facts.record(db, who, Observation(**{**good, **bad}))
    assert rows(db, who) == []


# --------------------------------------------------------------------------- the rule


def test_a_new_value_of_a_single_valued_key_closes_the_old_one_bitemporally(db):
    who = person()
    t1, t2 = T0, T0 + timedelta(days=7)
    first = facts.record(db, who, obs("wake_up_time", "6 am", 0.7, t=t1, call="c1", fact_type="routine"))
    second = facts.record(db, who, obs("wake_up_time", "7 am", 0.9, t=t2, call="c2", fact_type="routine"))
    assert (first.outcome, second.outcome) == (facts.INSERTED, facts.SUPERSEDED)
    old, new = rows(db, who)
    assert (old["status"], old["is_active"], old["valid_from"], old["valid_to"], old["expired_at"]) == \
        ("superseded", False, t1, t2, t2)
    assert old["superseded_at"] is not None and old["superseded_at"] >= old["recorded_at"]
    assert old["superseded_by"] == new["id"] == second.fact_id and old["closed_by_source"] == "analysis"
    assert (new["status"], new["valid_from"], new["valid_to"], new["superseded_at"]) == ("current", t2, None, None)
    # a replay of the older call cannot bring the old value back
    again = facts.record(db, who, obs("wake_up_time", "6 am", 0.7, t=t1, call="c1", fact_type="routine"))
    assert again.outcome == facts.STALE and current(db, who) == [("wake_up_time", "7 am")]
    assert len(rows(db, who)) == 2


def test_multi_valued_keys_hold_several_current_values(db):
    who = person()
    for name in ("Rosa", "Lupe", "Carmen"):
        assert facts.record(db, who, obs("daughter_name", name, fact_type="family")).outcome == facts.INSERTED
    # the agent writes the bare key, the analyzer the slugged one: the same value meets on one row
    assert facts.record(db, who, obs("daughter_name.rosa", "rosa", fact_type="family", source="agent")).outcome \
        == facts.CONFIRMED
    assert sorted(current(db, who)) == [("daughter_name.carmen", "Carmen"), ("daughter_name.lupe", "Lupe"),
                                        ("daughter_name.rosa", "Rosa")]
    assert all(r["multi_valued"] for r in rows(db, who))


def test_repeating_a_fact_raises_count_and_confidence_and_a_replay_changes_nothing(db):
    who = person()
    facts.record(db, who, obs("likes", "el café", 0.6, call="c1", fact_type="preference"))
    before = rows(db, who)
    # a replay of the same call (same observation): not even rewritten
    xmin = db.execute("SELECT xmin::text FROM user_facts WHERE phone_number_hash = %s", (who,)).fetchone()
    assert facts.record(db, who, obs("likes", "el café", 0.6, call="c1", fact_type="preference")).outcome \
        == facts.UNCHANGED
    assert db.execute("SELECT xmin::text FROM user_facts WHERE phone_number_hash = %s", (who,)).fetchone() == xmin
    r = facts.record(db, who, obs("likes", "El  Café", 0.5, t=T0 + timedelta(days=1), call="c2",
                                  fact_type="preference"))
    assert r.outcome == facts.CONFIRMED
    (row,) = rows(db, who)
    assert row["id"] == before[0]["id"] and row["observation_count"] == 2
    assert row["confidence"] == pytest.approx(0.8) and row["source_call_id"] == "c2" and row["first_call_id"] == "c1"
    assert row["fact_value"] == "el café"  # the first spelling stays
    # the agent saying it again in a call counts once, however often the tool call is retried
    for _ in range(2):
        facts.record(db, who, obs("likes", "el café", 0.5, t=T0 + timedelta(days=2), call="v1", source="agent",
                                  fact_type="preference"))
    (row,) = rows(db, who)
    assert row["observation_count"] == 3 and row["confidence"] == pytest.approx(0.9)


def test_an_explicit_retraction_closes_just_that_value(db):
    who = person()
    for med in ("metformina", "losartán"):
        facts.record(db, who, obs("medication", med, call="c1"))
    t = T0 + timedelta(days=3)
    r = facts.retract(db, who, fact_type="health", key="medication", value="Metformina", observed_at=t,
                      source="agent", call_id="v9")
    assert r.outcome == facts.RETRACTED
    assert current(db, who) == [("medication.losartan", "losartán")]
    closed = [x for x in rows(db, who) if x["status"] == "retracted"]
    assert [(x["fact_value"], x["valid_to"], x["closed_by_source"]) for x in closed] == [("metformina", t, "agent")]
    # nothing current left to retract
    assert facts.retract(db, who, fact_type="health", key="medication", value="metformina", observed_at=t,
                         source="agent").outcome == facts.NOT_FOUND
    with pytest.raises(facts.FactInputError, match="multi-valued"):
        facts.retract(db, who, fact_type="health", key="medication", observed_at=t, source="agent")


def test_protected_facts_are_only_questioned_by_the_analyzer(db):
    who = person()
    facts.record(db, who, obs("allergy_severity", "leve", call="c1"))  # not protected: superseded below
    facts.record(db, who, obs("diagnosis_main", "diabetes", call="c1"))  # not a protected base
    facts.record(db, who, obs("emergency_contact_phone", "hija Rosa", call="c1", fact_type="family"))
    facts.record(db, who, obs("medication", "metformina", call="c1"))
    t = T0 + timedelta(days=1)
    # the analyzer hears another emergency contact and "ya no tomo la metformina"
    r1 = facts.record(db, who, obs("emergency_contact_phone", "vecina Lola", 0.7, t=t, call="c2",
                                   fact_type="family"))
    r2 = facts.retract(db, who, fact_type="health", key="medication", value="metformina", observed_at=t,
                       source="analysis", call_id="c2", confidence=0.6)
    assert (r1.outcome, r2.outcome) == (facts.TO_CONFIRM, facts.TO_CONFIRM)
    assert ("medication.metformina", "metformina") in current(db, who)
    assert ("emergency_contact_phone", "hija Rosa") in current(db, who)
    open_ = {(x["fact_key"], x["proposal"], x["fact_value"]) for x in rows(db, who) if x["status"] == "to_confirm"}
    assert open_ == {("emergency_contact_phone", "value", "vecina Lola"),
                     ("medication.metformina", "retraction", "metformina")}
    # the question appears in the live view next to the value it questions
    live = {(x["fact_key"], x["status"]): x for x in facts.live(db, who)}
    assert live[("medication.metformina", "to_confirm")]["current_value"] == "metformina"
    assert [x["protected"] for x in facts.live(db, who)][:4] == [True] * 4  # protected first
    # the same extraction again: one question, one more observation
    again = facts.record(db, who, obs("emergency_contact_phone", "vecina  lola", 0.7, t=t, call="c3",
                                      fact_type="family"))
    assert again.outcome == facts.TO_CONFIRM
    assert len([x for x in rows(db, who) if x["status"] == "to_confirm"]) == 2
    # the agent asks; she still takes metformina and the contact is now Lola
    t2 = t + timedelta(hours=1)
    assert facts.record(db, who, obs("medication", "metformina", 0.9, t=t2, call="v1", source="agent")).outcome \
        == facts.CONFIRMED
    r = facts.record(db, who, obs("emergency_contact_phone", "vecina Lola", 0.9, t=t2, call="v1", source="agent",
                                  fact_type="family"))
    assert r.outcome == facts.SUPERSEDED
    by_key = {}
    for x in rows(db, who):
        by_key.setdefault(x["fact_key"], []).append((x["fact_value"], x["status"], x["proposal"]))
    assert by_key["medication.metformina"] == [("metformina", "current", None),
                                               ("metformina", "rejected", "retraction")]
    assert by_key["emergency_contact_phone"] == [("hija Rosa", "superseded", None),
                                                 ("vecina Lola", "current", "value")]
    accepted = next(x for x in rows(db, who) if x["fact_value"] == "vecina Lola")
    assert accepted["observation_count"] == 3 and accepted["first_call_id"] == "c2"


def test_the_agent_closes_a_protected_fact(db):
    who = person()
    facts.record(db, who, obs("allergy", "penicilina", call="c1"))
    r = facts.retract(db, who, fact_type="health", key="allergy", value="penicilina", observed_at=T0,
                      source="manual")
    assert r.outcome == facts.RETRACTED and current(db, who) == []


def test_provenance_of_each_observation(db):
    who = person()
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    db.execute("INSERT INTO companion_calls (call_id, phone_number_hash, recording_status) VALUES (%s, %s, "
               "'pending')", (call_id, who))
    db.execute("INSERT INTO call_utterances (call_id, leg, seq, start_s, end_s, text, confidence) "
               "VALUES (%s, 'person', 3, 12.5, 15.0, 'tomo metformina', 0.83)", (call_id,))
    ev = {"leg": "person", "seq": 3, "start_s": 12.5, "end_s": 15.0, "text": "tomo metformina", "char_start": 5,
          "char_end": 15}
    facts.record(db, who, obs("medication", "metformina", call=call_id, evidence=ev))
    facts.record(db, who, obs("medication", "metformina", 0.9, t=T0 + timedelta(days=1), call="v1",
                              source="agent", asr_confidence=0.97))
    (row,) = facts.history(db, who, key="medication", observations=True)
    assert row["fact_key"] == "medication.metformina" and row["asr_confidence"] == 0.97 and row["source"] == "agent"
    first, second = row["observations"]
    assert (first["source"], first["call_id"], first["evidence"], first["asr_confidence"]) == \
        ("analysis", call_id, ev, 0.83)
    assert (second["source"], second["call_id"], second["asr_confidence"]) == ("agent", "v1", 0.97)


def test_people_never_see_each_others_facts(db):
    a, b = person(), person()
    fa = facts.record(db, a, obs("pet_name", "Firulais", fact_type="pet"))
    facts.record(db, b, obs("pet_name", "Michi", fact_type="pet"))
    assert [x["fact_value"] for x in facts.live(db, a)] == ["Firulais"]
    assert [x["fact_value"] for x in facts.history(db, b)] == ["Michi"]
    # b cannot retract a's fact by its id
    assert facts.retract_by_id(db, b, fa.fact_id, observed_at=T0, source="manual").outcome == facts.NOT_FOUND
    assert current(db, a) == [("pet_name.firulais", "Firulais")]


def test_the_database_refuses_a_second_current_row(db):
    who = person()
    facts.record(db, who, obs("wake_up_time", "6 am", fact_type="routine"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO user_facts (phone_number_hash, fact_type, fact_key, fact_value, confidence) "
                   "VALUES (%s, 'routine', 'wake_up_time', '7 am', 0.5)", (who,))


@pytest.mark.parametrize("same_value", [True, False])
def test_concurrent_writers_leave_one_current_row(dsn, db, same_value):
    """Several connections write the same key of one person at once (the analyzer of two calls,
    the agent): one current row per value — by the lock, and by the index if the lock were gone."""
    who = person()
    n = 6
    conns = [psycopg.connect(dsn) for _ in range(n)]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def write(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            value = "6 am" if same_value else f"{6 + i} am"
            with conns[i].transaction():
                outcomes.append(facts.record(conns[i], who, obs("wake_up_time", value, t=T0 + timedelta(minutes=i),
                                                                call=f"c{i}", fact_type="routine",
                                                                source="analysis" if i % 2 else "agent")).outcome)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for c in conns:
        c.close()
    assert errors == []
    live = [r for r in rows(db, who) if r["status"] == "current"]
    assert len(live) == 1
    if same_value:
        assert len(rows(db, who)) == 1 and live[0]["observation_count"] == n
        assert sorted(outcomes) == sorted([facts.INSERTED] + [facts.CONFIRMED] * (n - 1))
    else:
        # each later value closed the one before (or was stale): a chain, never two open rows
        assert all(r["status"] == "superseded" for r in rows(db, who) if r["id"] != live[0]["id"])


def test_the_lock_is_not_the_only_guard(dsn, db):
    """Without the advisory lock two transactions racing on the same new value: the unique index
    makes the second fail instead of storing a duplicate current row."""
    who = person()
    c1, c2 = psycopg.connect(dsn), psycopg.connect(dsn)
    try:
        sql = ("INSERT INTO user_facts (phone_number_hash, fact_type, fact_key, fact_value, confidence) "
               "VALUES (%s, 'health', 'medication.metformina', 'metformina', 0.5)")
        c1.execute(sql, (who,))
        c2.execute("SET lock_timeout = '5s'")
        done = threading.Event()
        err: list[BaseException] = []

        def second() -> None:
            try:
                c2.execute(sql, (who,))
                c2.commit()
            except BaseException as exc:  # noqa: BLE001
                err.append(exc)
            done.set()

        t = threading.Thread(target=second)
        t.start()
        c1.commit()
        assert done.wait(10)
        t.join()
        assert len(err) == 1 and isinstance(err[0], psycopg.errors.UniqueViolation)
    finally:
        c1.close()
        c2.close()
    assert len(rows(db, who)) == 1


def test_a_questioned_value_said_again_after_the_old_one_was_closed_holds(db):
    who = person()
    facts.record(db, who, obs("emergency_contact_phone", "hija Rosa", call="c1", fact_type="family"))
    t = T0 + timedelta(days=1)
    assert facts.record(db, who, obs("emergency_contact_phone", "vecina Lola", t=t, call="c2",
                                     fact_type="family")).outcome == facts.TO_CONFIRM
    assert facts.retract(db, who, fact_type="family", key="emergency_contact_phone", observed_at=t,
                         source="agent", call_id="v1").outcome == facts.RETRACTED
    r = facts.record(db, who, obs("emergency_contact_phone", "vecina Lola", t=t + timedelta(days=1), call="c3",
                                  fact_type="family"))
    assert r.outcome == facts.INSERTED
    assert current(db, who) == [("emergency_contact_phone", "vecina Lola")]
    assert [x for x in rows(db, who) if x["status"] == "to_confirm"] == []
    assert next(x for x in rows(db, who) if x["id"] == r.fact_id)["observation_count"] == 2
