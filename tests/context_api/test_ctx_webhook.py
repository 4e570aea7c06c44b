"""The VAPI webhook over real HTTP against a real ``lupita context-api`` and the stack's Postgres:
every message type in every shape, the three tool-call shapes, bad input."""

from __future__ import annotations

import json
import secrets

import pytest
from ctxkit import (ASSISTANT_ID, message, person_of, query, random_phone, results, tool_call, tool_calls)

pytestmark = pytest.mark.stack

SHAPES = ("function-string", "function-object", "flat-parameters", "flat-arguments")


@pytest.mark.parametrize("where", ["call", "message"])
def test_assistant_request_answers_the_assistant_with_the_callers_brief(api, where):
    phone = random_phone()
    r = api.post(tool_calls(phone, tool_call("saveUserFact", {"type": "family", "key": "daughter_name",
                                                              "value": "Rosa", "confidence": 0.9})))
    assert results(r)[0]["result"]
    r = api.post(message("assistant-request", phone, where=where))
    assert r.status_code == 200
    body = r.json()
    assert body["assistantId"] == ASSISTANT_ID
    brief = body["assistantOverrides"]["variableValues"]["user_context"]
    assert "Rosa" in brief and "\n" not in brief


def test_assistant_request_for_an_unknown_or_missing_or_invalid_number_still_answers(api):
    for phone in (random_phone(), None, "12345"):
        r = api.post(message("assistant-request", phone))
        assert r.status_code == 200
        brief = r.json()["assistantOverrides"]["variableValues"]["user_context"]
        assert brief and r.json()["assistantId"] == ASSISTANT_ID
    assert api.metric("lupita_context_api_assistant_request_degraded_total", reason="no_phone") >= 2


@pytest.mark.parametrize("shape", SHAPES)
def test_each_tool_call_shape(api, shape):
    phone = random_phone()
    key = f"pet_name_{secrets.token_hex(3)}"
    save = tool_call("saveUserFact", {"type": "pet", "key": key, "value": "Firulais"}, shape=shape)
    get = tool_call("getUserContext", {}, shape=shape)
    out = results(api.post(tool_calls(phone, save, get)))
    assert [r["toolCallId"] for r in out] == [save["id"], get["id"]]
    assert [r["name"] for r in out] == ["saveUserFact", "getUserContext"]
    assert "result" in out[0], out[0]
    ctx = json.loads(out[1]["result"])
    assert any(f["key"] == key and f["value"] == "Firulais" and f["source"] == "agent" for f in ctx["context"]["facts"])
    assert "Firulais" in ctx["brief"]


def test_tool_calls_in_toolWithToolCallList_only(api):
    phone = random_phone()
    inner = tool_call("getUserContext", {}, shape="function-object")
    msg = message("tool-calls", phone, toolWithToolCallList=[{"type": "function", "function": {"name": "getUserContext"},
                                                              "toolCall": inner}])
    out = results(api.post(msg))
    assert out[0]["toolCallId"] == inner["id"] and "result" in out[0]


def test_one_failing_call_never_fails_the_others(api):
    phone = random_phone()
    calls = [
        tool_call("getUserContext", {}),
        tool_call("noSuchTool", {}),
        tool_call("saveUserFact", {"type": "health", "key": "x"}),                           # missing value
        tool_call("saveUserFact", {"type": "health", "key": "x", "value": "y", "phone": "1"}),  # extra argument
        tool_call("saveUserFact", {"type": "health", "key": "x", "value": "y" * 201}),       # over-long
        tool_call("saveUserFact", {"type": "astrology", "key": "x", "value": "y"}),          # unknown type
        tool_call("saveUserFact", {"type": "health", "key": "Bad Key", "value": "y"}),       # key shape
        tool_call("saveUserFact", {"type": "health", "key": "x", "value": "y", "confidence": 1.5}),
        {"id": "call_badjson", "type": "function", "function": {"name": "saveUserFact", "arguments": "{not json"}},
        {"id": "call_list", "type": "function", "function": {"name": "saveUserFact", "arguments": [1, 2]}},
        {"type": "function", "function": {"name": "getUserContext", "arguments": "{}"}},     # no id
        "not an object",
        tool_call("scheduleCallback", {"when": "en dos horas", "reason": "x" * 301}),
        tool_call("scheduleCallback", {"when": "blabla", "reason": "seguimiento"}),
        tool_call("saveUserFact", {"type": "health", "key": "x'); DROP TABLE user_facts;--", "value": "y"}),
        tool_call("getUserContext", {}),
    ]
    out = results(api.post(tool_calls(phone, *calls)))
    assert len(out) == len(calls)
    assert "result" in out[0] and "result" in out[-1]
    assert all("error" in r for r in out[1:-1]), out
    assert out[1]["name"] == "noSuchTool" and "desconocida" in out[1]["error"]
    assert "value" in out[2]["error"] and "phone" in out[3]["error"]
    assert "y" * 50 not in out[4]["error"]
    assert query("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person_of(phone),)) == [(0,)]
    assert query("SELECT count(*) FROM scheduled_callbacks WHERE phone_number_hash = %s", (person_of(phone),)) == [(0,)]
    assert api.metric("lupita_context_api_tool_calls_total", tool="unknown", outcome="error") >= 1


def test_more_tool_calls_than_the_limit_get_an_error_each(api):
    phone = random_phone()
    calls = [tool_call("getUserContext", {}) for _ in range(18)]
    out = results(api.post(tool_calls(phone, *calls)))
    assert [r["toolCallId"] for r in out] == [c["id"] for c in calls]
    assert all("result" in r for r in out[:16]) and all("error" in r for r in out[16:])


def test_tools_without_a_valid_caller_number_answer_errors_and_write_nothing(api):
    for phone in (None, "12", "+44 20 7946 0958"):
        out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}),
                                          tool_call("saveUserFact", {"type": "pet", "key": "x", "value": "y"}))))
        assert all("error" in r for r in out)
        assert all("44" not in r["error"] for r in out)


def test_get_user_context_refuses_another_persons_number(api):
    me, other = random_phone(), random_phone()
    out = results(api.post(tool_calls(me, tool_call("getUserContext", {"phone": other}),
                                      tool_call("getUserContext", {"phone": me}))))
    assert "error" in out[0] and "result" in out[1]


def test_end_of_call_report_is_kept_once_and_status_update_kept(api):
    phone = random_phone()
    vapi_id = f"vapi-{secrets.token_hex(8)}"
    ours = f"test-{secrets.token_hex(8)}"
    status = message("status-update", phone, vapi_call_id=vapi_id, status="in-progress",
                     call_extra={"metadata": {"lupita_call_id": ours}})
    assert api.post(status).status_code == 200
    report = message("end-of-call-report", phone, vapi_call_id=vapi_id, endedReason="customer-ended-call",
                     startedAt="2026-12-01T10:00:00.000Z", endedAt="2026-12-01T10:05:30.500Z",
                     summary="no se guarda", artifact={"transcript": "hola"})
    before = api.metric("lupita_context_api_end_of_call_reports_total", outcome="duplicate")
    first, second = api.post(report), api.post(report)
    assert first.json() == {"ok": True, "duplicate": False}
    assert second.json() == {"ok": True, "duplicate": True}
    assert api.metric("lupita_context_api_end_of_call_reports_total", outcome="duplicate") == before + 1
    rows = query("SELECT call_id, phone_number_hash, status, ended_reason, duration_seconds::float8, "
                 "report_received_at IS NOT NULL FROM vapi_calls WHERE vapi_call_id = %s", (vapi_id,))
    assert rows == [(ours, person_of(phone), "ended", "customer-ended-call", 330.5, True)]
    # a late status-update does not bring the call back to life; no phone in clear anywhere in the row
    api.post(message("status-update", phone, vapi_call_id=vapi_id, status="in-progress"))
    row = query("SELECT * FROM vapi_calls WHERE vapi_call_id = %s", (vapi_id,))[0]
    assert row[3] == "ended"
    digits = phone.lstrip("+")
    assert not any(digits[-10:] in str(v) for v in row)


def test_end_of_call_report_without_a_call_id_is_400(api):
    msg = message("end-of-call-report", None)
    del msg["message"]["call"]["id"]
    assert api.post(msg).status_code == 400


@pytest.mark.parametrize("kind", ["transcript", "conversation-update", "speech-update", "hang", "something-new"])
def test_informational_and_unknown_types_are_ignored_and_counted(api, kind):
    label = kind if kind in ("transcript", "conversation-update", "speech-update") else "unknown"
    before = api.metric("lupita_context_api_webhook_messages_total", type=label)
    r = api.post(message(kind, random_phone(), transcript="hola", messages=[]))
    assert r.status_code == 200 and r.json()["ignored"] == label
    assert api.metric("lupita_context_api_webhook_messages_total", type=label) == before + 1


@pytest.mark.parametrize("raw, status", [
    (b"{not json", 400), (b"", 400), (b"\xff\xfe", 400), (b"[]", 400), (b'{"message": 3}', 400),
    (b'{"message": {"type": 7}}', 400), (b'{"msg": {}}', 400),
])
def test_malformed_bodies_are_400(api, raw, status):
    r = api.post(None, raw=raw)
    assert r.status_code == status and "error" in r.json()


def test_oversize_body_is_413_and_nothing_written(migrated):
    from ctxkit import ContextApi

    phone = random_phone()
    with ContextApi("context-api-small", {"LUPITA_CONTEXT_API_MAX_BODY_BYTES": "2048"}) as small:
        big = tool_calls(phone, tool_call("saveUserFact", {"type": "pet", "key": "x", "value": "y"}), pad="z" * 4096)
        assert small.post(big).status_code == 413
        # chunked, without a Content-Length
        body = json.dumps(big).encode()
        r = small.client.post("/vapi/webhook", content=iter([body[:1000], body[1000:]]),
                              headers={"authorization": f"Bearer {small.token}"})
        assert r.status_code == 413
        assert small.metric("lupita_context_api_webhook_rejected_total", reason="too_large") == 2
        assert query("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person_of(phone),)) == [(0,)]
