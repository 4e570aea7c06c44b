"""The control API: ``POST /vapi/calls`` starts listening to a VAPI call (what the context-api's
webhook does when a call goes in-progress); bad requests are refused and counted."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from bridgekit import LUPITA, PERSON, read_call
from gwkit import PHONE, Deltas, pcm_bytes, running_gateway
from lupita.config import CommonSettings
from telephony_gateway.vapi_sim import ListenScript, ListenServer

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

CONTROL_TOKEN = "test-control-token"
LISTEN_KEY = "test-vapi-public-key"


def body(vapi_id: str, url: str, **over) -> dict:
    b = {"call": {"id": vapi_id, "monitor": {"listenUrl": url}, "customer": {"number": PHONE}, "status": "in-progress"},
         "consent": True, "consentSource": "ivr_prompt_v2", "region": "oaxaca"}
    b.update(over)
    return b


async def test_post_vapi_calls_listens_to_the_call_until_it_ends_and_refuses_bad_requests(bridge):
    rng = np.random.default_rng(50)
    audio = rng.integers(-9000, 9000, (16000, 2), dtype=np.int16)  # 1 s at 16 kHz
    vapi_id = str(uuid.uuid4())
    server = await ListenServer(listen_token=LISTEN_KEY).start()
    server.scripts[vapi_id] = ListenScript(audio, speed=0)
    d = Deltas(("lupita_gateway_bad_input_total", {"source": "vapi", "kind": "invalid_field"}),
               ("lupita_gateway_bad_input_total", {"source": "vapi", "kind": "malformed_json"}))
    try:
        async with running_gateway(bridge, bridge.token, gateway_control_port=0, gateway_control_tokens=CONTROL_TOKEN,
                                   gateway_vapi_listen_token=LISTEN_KEY, gateway_vapi_rate_check_seconds=0) as gw:
            base = f"http://127.0.0.1:{gw.control.port}"
            auth = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
            async with httpx.AsyncClient(timeout=10) as http:
                no_auth = await http.post(f"{base}/vapi/calls", json=body(vapi_id, server.url(vapi_id)))
                wrong = await http.post(f"{base}/vapi/calls", json=body(vapi_id, server.url(vapi_id)),
                                        headers={"Authorization": "Bearer nope"})
                no_number = body(vapi_id, server.url(vapi_id))
                del no_number["call"]["customer"]
                missing = await http.post(f"{base}/vapi/calls", json=no_number, headers=auth)
                not_json = await http.post(f"{base}/vapi/calls", content=b"{nope", headers=auth)
                bad_url = await http.post(f"{base}/vapi/calls", json=body(vapi_id, "http://example.org/x"), headers=auth)
                ok = await http.post(f"{base}/vapi/calls", json=body(vapi_id, server.url(vapi_id)), headers=auth)
            assert [r.status_code for r in (no_auth, wrong, missing, not_json, bad_url)] == [401, 401, 400, 400, 400]
            assert "555" not in missing.text and "0142" not in missing.text
            assert ok.status_code == 202 and ok.json() == {"callId": f"vapi-{vapi_id}"}
            recs = await read_call(CommonSettings(), f"vapi-{vapi_id}")  # waits for the call's ended event
    finally:
        await server.close()
    assert recs.ended().reason == "completed"
    assert recs.leg_payload(PERSON) == pcm_bytes(audio[:, 0]) and recs.leg_payload(LUPITA) == pcm_bytes(audio[:, 1])
    assert d("lupita_gateway_bad_input_total", source="vapi", kind="invalid_field") == 2
    assert d("lupita_gateway_bad_input_total", source="vapi", kind="malformed_json") == 1
