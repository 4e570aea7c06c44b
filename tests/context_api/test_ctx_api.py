"""The JSON API (/v1) of a real ``lupita context-api`` child over HTTP, on the stack's Postgres: the
OpenAPI document (served, and the real answers valid against it), bearer auth and body limits
before anything is read, people named in the body only, facts (list with history, add, retract,
protected facts to confirm shown in the context and the brief), callbacks (list, create, cancel),
isolation of two people, and each class of bad input answered without echoing it."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest
from ctxkit import dsn, person_of, query, random_phone, results, tool_call, tool_calls
from jsonschema import Draft202012Validator

pytestmark = pytest.mark.stack

V1_PATHS = {"/v1/context", "/v1/facts", "/v1/facts/list", "/v1/facts/retract", "/v1/callbacks",
            "/v1/callbacks/list", "/v1/callbacks/cancel", "/v1/erasure"}


def v1(api, path: str, body, *, token: str | None = "default", raw: bytes | None = None, headers=None):
    h = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {api.token if token == 'default' else token}"
    content = raw if raw is not None else json.dumps(body).encode()
    return api.client.post(path, content=content, headers=h)


@pytest.fixture(scope="module")
def openapi(api) -> dict:
    r = api.client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def valid(openapi: dict, path: str, status: int, body: dict) -> None:
    """``body`` matches the schema the served document gives for that answer."""
    schema = openapi["paths"][path]["post"]["responses"][str(status)]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": openapi["components"]}).validate(body)


def seed_fact(person: str, key: str, value: str, *, source: str = "analysis", retract: bool = False,
              fact_type: str = "health"):
    import psycopg
    from lupita import facts

    with psycopg.connect(dsn(), autocommit=True) as conn:
        now = datetime.now(timezone.utc)
        if retract:
            return facts.retract(conn, person, fact_type=fact_type, key=key, value=value, observed_at=now,
                                 source=source, call_id=f"call-{secrets.token_hex(4)}")
        return facts.record(conn, person, facts.Observation(
            fact_type=fact_type, key=key, value=value, confidence=0.8, observed_at=now, source=source,
            call_id=f"call-{secrets.token_hex(4)}"))


# --------------------------------------------------------------------------- the document


def test_the_openapi_document_describes_every_operation_with_bodies_only(openapi):
    assert openapi["openapi"].startswith("3.") and openapi["info"]["title"] == "Lupita context API"
    assert V1_PATHS <= set(openapi["paths"])
    for path in V1_PATHS:
        ops = openapi["paths"][path]
        assert set(ops) == {"post"}, path  # no GET: nothing about a person in a URL
        op = ops["post"]
        assert op["requestBody"]["required"] is True
        # no path or query parameters at all: a phone number can only travel in the body
        assert not [p for p in op.get("parameters", []) if p["in"] in ("path", "query")], path
        assert {"401", "413", "422"} <= set(op["responses"]), path
    person = openapi["components"]["schemas"]["ContextRequest"]["properties"]
    assert {"phone", "person_id"} <= set(person)


# --------------------------------------------------------------------------- refusals


def test_without_the_token_nothing_is_read_or_written(api):
    phone = random_phone()
    body = {"phone": phone, "type": "routine", "key": "wake_up_time", "value": "6 am"}
    for token in (None, "wrong-token", api.token[:-1]):
        r = v1(api, "/v1/facts", body, token=token)
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
    assert v1(api, "/v1/facts", body, token=None, headers={"authorization": f"Basic {api.token}"}).status_code == 401
    assert v1(api, "/v1/facts", None, token=None, raw=b"{not json").status_code == 401  # auth before parsing
    assert query("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person_of(phone),)) == [(0,)]
    # the webhook's tokens (bearer mode) are the API's unless it has its own; 'Bearer ' is optional
    r = v1(api, "/v1/context", {"phone": phone}, token=None, headers={"authorization": api.token})
    assert r.status_code == 200


def test_an_oversize_body_is_refused_before_it_is_read(api):
    big = json.dumps({"phone": random_phone(), "pad": "x" * (2 * 1024 * 1024)}).encode()
    assert v1(api, "/v1/context", None, raw=big).status_code == 413

    def chunks():  # no content-length: counted as it arrives
        yield b'{"phone": "+525512345678", "x": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = api.client.post("/v1/context", content=chunks(), headers={"authorization": f"Bearer {api.token}"})
    assert r.status_code == 413


@pytest.mark.parametrize("body, where", [
    ({}, "phone or person_id"),
    ({"phone": "+5215512345678", "person_id": "a" * 64}, "exactly one"),
    ({"person_id": "not-an-id"}, "person_id"),
    ({"phone": "5512345678", "extra": 1}, "extra"),
    ({"phone": 5512345678}, "phone"),
])
def test_bad_person_references_are_refused_without_echo(api, body, where):
    r = v1(api, "/v1/context", body)
    assert r.status_code == 422
    text = r.text
    assert "5512345678" not in text and "not-an-id" not in text  # the values sent are never echoed
    assert r.json()["error"] == "invalid request"
    assert any(where in json.dumps(p) for p in r.json()["problems"]), r.json()


def test_an_invalid_phone_is_refused_without_echo(api):
    for phone in ("12", "+44 20 7946 0958", "no es un número"):  # too short, a region not served, text
        r = v1(api, "/v1/context", {"phone": phone})
        assert r.status_code == 422 and r.json()["error"].startswith("invalid phone")
        assert phone not in r.text and "7946" not in r.text


def test_malformed_json_and_wrong_types_are_422(api):
    assert v1(api, "/v1/facts", None, raw=b'{"phone": ').status_code == 422
    phone = random_phone()
    for bad in ({"type": "unknown"}, {"key": "Not A Key"}, {"value": ""}, {"value": "x" * 201},
                {"confidence": 2}, {"valid_from": "2999-01-01T00:00:00Z"}):
        body = {"phone": phone, "type": "routine", "key": "wake_up_time", "value": "6 am", **bad}
        assert v1(api, "/v1/facts", body).status_code == 422, bad
    assert query("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person_of(phone),)) == [(0,)]


# --------------------------------------------------------------------------- facts


def test_facts_add_list_history_and_retract(api, openapi):
    phone = random_phone()
    person = person_of(phone)
    r = v1(api, "/v1/facts", {"phone": phone, "type": "routine", "key": "wake_up_time", "value": "6 am"})
    assert r.status_code == 201 and r.json()["outcome"] == "inserted"
    valid(openapi, "/v1/facts", 201, r.json())
    first = r.json()["fact"]
    assert r.json()["person_id"] == person and first["source"] == "manual" and first["status"] == "current"
    again = v1(api, "/v1/facts", {"person_id": person, "type": "routine", "key": "wake_up_time", "value": "6  AM"})
    assert again.status_code == 200 and again.json()["outcome"] == "confirmed"
    assert again.json()["fact"]["observation_count"] == 2
    newer = v1(api, "/v1/facts", {"phone": phone, "type": "routine", "key": "wake_up_time", "value": "7 am"})
    assert newer.status_code == 201 and newer.json()["outcome"] == "superseded"
    for med in ("metformina", "losartán"):  # multi-valued: both current
        assert v1(api, "/v1/facts", {"phone": phone, "type": "health", "key": "medication", "value": med}
                  ).json()["outcome"] == "inserted"

    listed = v1(api, "/v1/facts/list", {"phone": phone})
    assert listed.status_code == 200
    valid(openapi, "/v1/facts/list", 200, listed.json())
    assert sorted((f["key"], f["value"]) for f in listed.json()["facts"]) == [
        ("medication.losartan", "losartán"), ("medication.metformina", "metformina"), ("wake_up_time", "7 am")]
    history = v1(api, "/v1/facts/list", {"phone": phone, "key": "wake_up_time", "history": True,
                                         "observations": True}).json()["facts"]
    assert [(f["value"], f["status"]) for f in history] == [("6 am", "superseded"), ("7 am", "current")]
    assert history[0]["valid_to"] is not None and history[0]["superseded_by"] == history[1]["id"]
    assert len(history[0]["observations"]) == 2

    gone = v1(api, "/v1/facts/retract", {"phone": phone, "type": "health", "key": "medication",
                                         "value": "Metformina"})
    assert gone.status_code == 200 and gone.json()["outcome"] == "retracted"
    valid(openapi, "/v1/facts/retract", 200, gone.json())
    assert gone.json()["fact"]["status"] == "retracted"
    by_id = v1(api, "/v1/facts/retract", {"phone": phone, "fact_id": newer.json()["fact"]["id"]})
    assert by_id.json()["outcome"] == "retracted"
    assert v1(api, "/v1/facts/retract", {"phone": phone, "fact_id": newer.json()["fact"]["id"]}).status_code == 404
    assert [f["value"] for f in v1(api, "/v1/facts/list", {"phone": phone}).json()["facts"]] == ["losartán"]
    # retract names one fact: an id or a key, not both
    assert v1(api, "/v1/facts/retract", {"phone": phone, "fact_id": 1, "type": "health",
                                         "key": "medication"}).status_code == 422


def test_a_protected_fact_questioned_by_the_analyzer_is_asked_by_the_agent(api, openapi):
    phone = random_phone()
    person = person_of(phone)
    seed_fact(person, "medication", "metformina")
    assert seed_fact(person, "medication", "metformina", retract=True).outcome == "to_confirm"
    r = v1(api, "/v1/context", {"phone": phone})
    assert r.status_code == 200
    valid(openapi, "/v1/context", 200, r.json())
    ctx = r.json()["context"]
    assert [f["value"] for f in ctx["facts"]] == ["metformina"] and ctx["facts"][0]["protected"] is True
    (q,) = ctx["to_confirm"]
    assert q["question"] == "¿Sigue tomando metformina?" and q["proposed"] == "retraction"
    assert "Por confirmar con tacto: ¿Sigue tomando metformina?" in r.json()["brief"]
    # the voice agent sees the same question (getUserContext), and answers it by saving the fact again
    out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}))))
    assert "¿Sigue tomando metformina?" in json.loads(out[0]["result"])["brief"]
    saved = results(api.post(tool_calls(phone, tool_call("saveUserFact", {
        "type": "health", "key": "medication", "value": "metformina", "confidence": 0.95}))))
    assert saved[0]["result"] == "Dato confirmado."
    ctx = v1(api, "/v1/context", {"phone": phone}).json()["context"]
    assert ctx["to_confirm"] == [] and ctx["facts"][0]["observations"] == 2


def test_one_person_never_reaches_anothers_facts_or_callbacks(api):
    a, b = random_phone(), random_phone()
    fa = v1(api, "/v1/facts", {"phone": a, "type": "pet", "key": "pet_name", "value": "Firulais"}).json()["fact"]
    assert v1(api, "/v1/facts/retract", {"phone": b, "fact_id": fa["id"]}).status_code == 404
    assert v1(api, "/v1/facts/list", {"phone": b}).json()["facts"] == []
    when = (datetime.now(timezone.utc) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    cb = v1(api, "/v1/callbacks", {"phone": a, "when": when.isoformat(), "reason": "x"}).json()["callback"]
    assert v1(api, "/v1/callbacks/cancel", {"phone": b, "callback_id": cb["id"]}).status_code == 404
    assert v1(api, "/v1/callbacks/list", {"phone": b}).json()["callbacks"] == []
    assert [f["value"] for f in v1(api, "/v1/facts/list", {"phone": a}).json()["facts"]] == ["Firulais"]


def test_sql_looking_values_are_stored_as_text(api):
    phone = random_phone()
    value = "x'); DROP TABLE user_facts;--"
    r = v1(api, "/v1/facts", {"phone": phone, "type": "other", "key": "note", "value": value})
    assert r.status_code == 201 and r.json()["fact"]["value"] == value
    assert query("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person_of(phone),)) == [(1,)]


# --------------------------------------------------------------------------- callbacks


def test_callbacks_create_list_cancel(api, openapi):
    phone = random_phone()
    when = (datetime.now(timezone.utc) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    r = v1(api, "/v1/callbacks", {"phone": phone, "when": when.isoformat(), "reason": "preguntar por la cadera"})
    assert r.status_code == 201 and r.json()["outcome"] == "created"
    valid(openapi, "/v1/callbacks", 201, r.json())
    cb = r.json()["callback"]
    assert cb["status"] == "pending" and datetime.fromisoformat(cb["scheduled_for"]) == when
    near = v1(api, "/v1/callbacks", {"phone": phone, "when": (when + timedelta(minutes=10)).isoformat(),
                                     "reason": "otra vez"})
    assert near.status_code == 200 and near.json()["outcome"] == "existing" and near.json()["callback"]["id"] == cb["id"]
    spoken = v1(api, "/v1/callbacks", {"phone": phone, "when": "en dos horas", "reason": "seguimiento"})
    assert spoken.status_code == 201
    listed = v1(api, "/v1/callbacks/list", {"phone": phone})
    valid(openapi, "/v1/callbacks/list", 200, listed.json())
    assert [c["id"] for c in listed.json()["callbacks"]] == [spoken.json()["callback"]["id"], cb["id"]]
    gone = v1(api, "/v1/callbacks/cancel", {"phone": phone, "callback_id": cb["id"]})
    assert gone.status_code == 200 and gone.json()["callback"]["status"] == "cancelled"
    assert v1(api, "/v1/callbacks/cancel", {"phone": phone, "callback_id": cb["id"]}).status_code == 409
    assert [c["id"] for c in v1(api, "/v1/callbacks/list", {"phone": phone}).json()["callbacks"]] == \
        [spoken.json()["callback"]["id"]]
    every = v1(api, "/v1/callbacks/list", {"phone": phone, "include_closed": True}).json()["callbacks"]
    assert {c["status"] for c in every} == {"pending", "cancelled"}
    for when_text in ((datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(), "en 90 días", "cuando sea"):
        bad = v1(api, "/v1/callbacks", {"phone": phone, "when": when_text, "reason": "x"})
        assert bad.status_code == 422 and bad.json()["error"].startswith("when:")


def test_forget_user_fact_closes_just_that_value_and_keeps_it_in_the_history(api):
    phone = random_phone()
    for med in ("metformina", "losartán"):
        results(api.post(tool_calls(phone, tool_call("saveUserFact", {"type": "health", "key": "medication",
                                                                     "value": med}))))
    out = results(api.post(tool_calls(
        phone,
        tool_call("forgetUserFact", {"type": "health", "key": "medication", "value": "Metformina"}),
        tool_call("forgetUserFact", {"type": "health", "key": "medication", "value": "metformina"}),
        tool_call("forgetUserFact", {"type": "health", "key": "medication"}),
        tool_call("forgetUserFact", {"type": "health", "key": "medication", "value": "x", "when": "ayer"}),
    )))
    assert out[0]["result"] == "Dato retirado; queda en el historial."
    assert out[1]["result"] == "No había ese dato guardado como vigente."
    assert "indica también el valor" in out[2]["error"] and "no admitidos" in out[3]["error"]
    history = v1(api, "/v1/facts/list", {"phone": phone, "history": True}).json()["facts"]
    assert sorted((f["value"], f["status"], f["closed_by_source"]) for f in history) == [
        ("losartán", "current", None), ("metformina", "retracted", "agent")]


def test_the_pool_keeps_the_dsns_own_options_and_adds_its_timeouts(migrated):
    import psycopg
    from context_api.store import Pool

    pool = Pool(psycopg.conninfo.make_conninfo(dsn(), options="-c search_path=pg_catalog,public"), 1, 1500)
    try:
        with pool.connection(2) as conn:
            assert conn.execute("SHOW search_path").fetchone()[0] == "pg_catalog,public"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1500ms"
    finally:
        pool.close()
