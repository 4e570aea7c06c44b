"""The three tools on the real Postgres: what getUserContext returns for a seeded person (facts,
last calls in the person's words, alerts, pending callbacks), saveUserFact through the stream
processor's fact rule, scheduleCallback (Spanish and ISO times, refusals, idempotence), and
isolation between two people, also under concurrent requests."""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from ctxkit import dsn, person_of, query, random_phone, results, tool_call, tool_calls

pytestmark = pytest.mark.stack


def _ctx(api, phone: str) -> dict:
    out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}))))
    assert "result" in out[0], out[0]
    return json.loads(out[0]["result"])


def _seed_call(person: str, days_ago: int, summary: str, emotion: str, alert: tuple[str, str, str] | None = None) -> str:
    call_id = f"test-{secrets.token_hex(8)}"
    started = datetime.now(timezone.utc) - timedelta(days=days_ago)
    with psycopg.connect(dsn()) as conn:
        conn.execute(
            "INSERT INTO companion_calls (call_id, phone_number_hash, recording_status, started_at, ended_at, "
            "summary, emotion_primary, topics) VALUES (%s, %s, 'recorded', %s, %s, %s, %s, '[\"health\"]')",
            (call_id, person, started, started + timedelta(minutes=5), summary, emotion))
        if alert:
            conn.execute("INSERT INTO call_alerts (call_id, cue_id, severity, evidence, raised_at) "
                         "VALUES (%s, %s, %s, %s, %s)",
                         (call_id, alert[0], alert[1], json.dumps({"leg": "person", "text": alert[2]}), started))
    return call_id


def test_get_user_context_for_a_seeded_person(api):
    phone = random_phone()
    person = person_of(phone)
    _seed_call(person, 3, "Contó que se cayó en el baño; le duele la cadera.", "sad",
               alert=("fall", "high", "me caí en el baño"))
    _seed_call(person, 10, "Habló de su nieta Sofía.", "positive")
    out = results(api.post(tool_calls(
        phone,
        tool_call("saveUserFact", {"type": "health", "key": "medication.metformina", "value": "metformina 850 mg",
                                   "confidence": 0.95}),
        tool_call("scheduleCallback", {"when": "pasado mañana a las cinco de la tarde", "reason": "preguntar por la cadera"}),
    )))
    assert all("result" in r for r in out), out
    got = _ctx(api, phone)
    ctx, brief = got["context"], got["brief"]
    assert ctx["known"] is True
    assert [f["value"] for f in ctx["facts"]] == ["metformina 850 mg"]
    assert [c["when"] for c in ctx["last_calls"]][0].startswith("hace 3 días") and ctx["last_calls"][1]["when"] == "hace una semana"
    assert ctx["last_calls"][0]["emotion"] == "sad" and "cadera" in ctx["last_calls"][0]["summary"]
    assert ctx["alerts"][0]["cue"] == "fall" and ctx["alerts"][0]["said"] == "me caí en el baño"
    assert ctx["pending_callbacks"][0]["reason"] == "preguntar por la cadera"
    assert ctx["pending_callbacks"][0]["when"].endswith("a las 17:00")
    assert brief.startswith("Pendiente de seguimiento: hace 3 días")
    for words in ("me caí en el baño", "metformina 850 mg", "preguntar por la cadera", "hace una semana"):
        assert words in brief
    assert len(brief) <= 1200 and "\n" not in brief


def test_save_user_fact_follows_the_fact_rule_of_the_stream_processor(api):
    phone = random_phone()
    person = person_of(phone)

    def save(value: str, confidence: float = 0.8) -> str:
        out = results(api.post(tool_calls(phone, tool_call("saveUserFact", {
            "type": "routine", "key": "wake_up_time", "value": value, "confidence": confidence}))))
        return out[0]["result"]

    assert save("6:00") == "Dato guardado."
    assert save("6:00") == "Dato confirmado."          # observed again: confirmed in place, no new row
    assert save("7:00", 0.9).startswith("Dato actualizado")  # superseded: the old value stays as history
    rows = query("SELECT fact_value, is_active, source FROM user_facts WHERE phone_number_hash = %s "
                 "ORDER BY id", (person,))
    assert rows == [("6:00", False, "agent"), ("7:00", True, "agent")]


def test_schedule_callback_is_idempotent_and_refuses_past_and_far(api):
    phone = random_phone()
    person = person_of(phone)
    when = (datetime.now(timezone.utc) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)

    def schedule(when_text: str) -> dict:
        return results(api.post(tool_calls(phone, tool_call("scheduleCallback", {"when": when_text,
                                                                                 "reason": "seguimiento"}))))[0]

    first = schedule(when.isoformat())
    assert first["result"].startswith("Llamada agendada para")
    again = schedule(when.isoformat())                      # a retried tool call
    near = schedule((when + timedelta(minutes=10)).isoformat())  # within the window: the same callback
    assert again["result"].startswith("Ya había") and near["result"].startswith("Ya había")
    assert "pasó" in schedule((datetime.now(timezone.utc) - timedelta(hours=1)).isoformat())["error"]
    assert "60 días" in schedule("en 90 días")["error"]
    assert "No entendí" in schedule("cuando se pueda")["error"]
    rows = query("SELECT scheduled_for, status, reason FROM scheduled_callbacks WHERE phone_number_hash = %s", (person,))
    assert rows == [(when, "pending", "seguimiento")]
    # concurrent retries of one request still make one row
    later = (when + timedelta(days=1)).isoformat()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: schedule(later), range(8)))
    assert sum(o.get("result", "").startswith("Llamada agendada") for o in outs) == 1
    assert query("SELECT count(*) FROM scheduled_callbacks WHERE phone_number_hash = %s", (person,)) == [(2,)]


def test_two_people_never_see_each_others_data_even_concurrently(api):
    a, b = random_phone(), random_phone("US")
    for phone, name in ((a, "Rosa"), (b, "Linda")):
        out = results(api.post(tool_calls(phone, tool_call("saveUserFact", {
            "type": "family", "key": "daughter_name", "value": name}))))
        assert "result" in out[0]

    def ask(i: int) -> tuple[str, dict]:
        phone = a if i % 2 else b
        return phone, _ctx(api, phone)

    with ThreadPoolExecutor(8) as pool:
        for phone, got in pool.map(ask, range(40)):
            values = {f["value"] for f in got["context"]["facts"]}
            assert values == ({"Rosa"} if phone == a else {"Linda"})
            assert ("Linda" in got["brief"]) == (phone == b) and ("Rosa" in got["brief"]) == (phone == a)
