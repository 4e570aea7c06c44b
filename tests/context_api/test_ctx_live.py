"""What THIS call has raised so far, in the context of a getUserContext the agent calls during the
call: the alerts the understanding stage writes to ``call_alerts`` while the call is live (written
here by the stage's own sink, ``PostgresSink.write_alert``), found by the live call's id — the
telephony gateway's ``vapi-<VAPI call id>``, or ours from the call's metadata — and never another
person's."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from ctxkit import dsn, person_of, random_phone, results, tool_call, tool_calls
from profkit import recorder_row, write_alert, write_call

pytestmark = pytest.mark.stack


def _ctx(api, phone: str, vapi_call_id: str, **kw) -> dict:
    out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}), vapi_call_id=vapi_call_id, **kw)))
    assert "result" in out[0], out[0]
    return json.loads(out[0]["result"])


def test_alerts_raised_in_the_live_call_are_in_the_context_at_once(api):
    phone = random_phone()
    person = person_of(phone)
    earlier = write_call(person, days_ago=2, topics=("salud",), summary="Habló de su presión.")
    write_alert(earlier, "dizziness", "medium", "me mareé en la mañana")
    vapi_id = str(uuid.uuid4())
    live_id = f"vapi-{vapi_id}"  # the gateway's id of the VAPI call (no companion_calls row yet: the call is live)

    before = _ctx(api, phone, vapi_id)["context"]
    assert before["this_call_alerts"] == [] and [a["cue"] for a in before["alerts"]] == ["dizziness"]

    write_alert(live_id, "fall", "high", "me caí en el baño hace rato")
    write_alert(live_id, "chest_pain", "critical", "me duele el pecho", to_verify=True)
    got = _ctx(api, phone, vapi_id)
    ctx, brief = got["context"], got["brief"]
    assert [(a["cue"], a["severity"], a["to_verify"]) for a in ctx["this_call_alerts"]] == \
        [("fall", "high", False), ("chest_pain", "critical", True)]
    assert ctx["this_call_alerts"][0]["said"] == "me caí en el baño hace rato"
    assert [a["cue"] for a in ctx["alerts"]] == ["dizziness"]  # the earlier call's, not repeated
    assert brief.startswith("En esta llamada ya dijo: fall (gravedad alta): «me caí en el baño hace rato»; "
                            "atiéndelo ahora; chest pain (gravedad crítica, por verificar)"), brief
    assert api.metric("lupita_context_api_live_alerts_total") >= 2

    # once the recorder writes the call's row (the person's), the alerts are also the person's recent
    # alerts; the live call still says them once, as this call's
    from stream_processor.stores.calls_db import CallStore
    from datetime import datetime, timezone

    store = CallStore(dsn())
    try:
        store.write_call(recorder_row(live_id, person, datetime.now(timezone.utc)))
    finally:
        store.close()
    ctx = _ctx(api, phone, vapi_id)["context"]
    assert [a["cue"] for a in ctx["this_call_alerts"]] == ["fall", "chest_pain"]
    assert [a["cue"] for a in ctx["alerts"]] == ["dizziness"]


def test_our_call_id_in_the_metadata_finds_the_live_calls_alerts(api):
    phone = random_phone()
    ours = f"test-live-{uuid.uuid4().hex[:10]}"
    write_alert(ours, "help_request", "critical", "necesito una ambulancia")
    ctx = _ctx(api, phone, str(uuid.uuid4()), call_extra={"metadata": {"lupita_call_id": ours}})["context"]
    assert [a["cue"] for a in ctx["this_call_alerts"]] == ["help_request"]
    assert ctx["known"] is True


def test_a_call_of_another_person_never_shows_its_alerts(api):
    """B's message claims A's live call id (a misrouted or forged id): A's call row names A, so B
    gets nothing of it; A gets it."""
    a, b = random_phone(), random_phone()
    vapi_id = str(uuid.uuid4())
    live_id = f"vapi-{vapi_id}"
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO companion_calls (call_id, phone_number_hash, recording_status, started_at) "
                     "VALUES (%s, %s, 'pending', now())", (live_id, person_of(a)))
    write_alert(live_id, "fall", "high", "me caí")
    assert _ctx(api, b, vapi_id)["context"]["this_call_alerts"] == []
    assert [x["cue"] for x in _ctx(api, a, vapi_id)["context"]["this_call_alerts"]] == ["fall"]
