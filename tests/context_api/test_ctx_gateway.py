"""The webhook starts the telephony gateway listening when VAPI says a call is ``in-progress``: the
real gateway (in this process, its control API on a free port) and a real media bridge on the
stack's Kafka, VAPI's listen socket played by ``telephony_gateway.vapi_sim``, and the context-api a
child process configured with the gateway's URL and token. The call's audio arrives in Kafka under
``vapi-<id>``; consent comes from the call's metadata or, failing that, from our consent records;
without consent the gateway is not asked; the webhook never waits for the gateway (a gateway
that does not answer costs the webhook nothing and is counted)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import numpy as np
import psycopg
import pytest
import pytest_asyncio
from ctxkit import ContextApi, dsn, message, person_of, random_phone

from bridgekit import LUPITA, PERSON, read_call, start_bridge, stop_bridge

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

CONTROL_TOKEN = "test-ctx-control-token"
LISTEN_KEY = "test-ctx-vapi-listen-key"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bridge(stack_env):
    running = await start_bridge(initial_credits=50, max_linger_ms=250)
    yield running
    await stop_bridge(running)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(bridge):
    from telephony_gateway.server import Gateway
    from telephony_gateway.settings import GatewaySettings

    gw = Gateway(GatewaySettings(
        gateway_host="127.0.0.1", gateway_port=0, gateway_metrics_port=0, bridge_target=f"127.0.0.1:{bridge.bridge.port}",
        bridge_tokens=bridge.token,
        gateway_twilio_auth_token="unused-here", gateway_drain_seconds=5, gateway_bridge_close_seconds=15,
        gateway_control_port=0, gateway_control_tokens=CONTROL_TOKEN, gateway_vapi_listen_token=LISTEN_KEY,
        gateway_vapi_rate_check_seconds=0))
    await gw.start()
    yield gw
    await gw.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def listen():
    from telephony_gateway.vapi_sim import ListenServer

    server = await ListenServer(listen_token=LISTEN_KEY).start()
    yield server
    await server.close()


@pytest.fixture(scope="module")
def api(migrated, gateway):
    with ContextApi("context-api-gateway", {
            "LUPITA_CONTEXT_API_GATEWAY_URL": f"http://127.0.0.1:{gateway.control.port}",
            "LUPITA_CONTEXT_API_GATEWAY_TOKEN": CONTROL_TOKEN}) as server:
        yield server


def in_progress(phone: str, vapi_id: str, listen_url: str | None, metadata: dict | None = None) -> dict:
    extra: dict = {"type": "outboundPhoneCall", "status": "in-progress"}
    if listen_url:
        extra["monitor"] = {"listenUrl": listen_url, "controlUrl": "https://example.invalid/control"}
    if metadata is not None:
        extra["metadata"] = metadata
    return message("status-update", phone, vapi_call_id=vapi_id, call_extra=extra, status="in-progress")


async def outcome(api, name: str, at_least: float, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = api.metric("lupita_context_api_gateway_listen_total", outcome=name)
        if value >= at_least:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"outcome {name} never reached {at_least}:\n{api.log_tail()}")


async def test_in_progress_with_consent_in_the_metadata_gets_the_call_recorded(api, listen):
    from lupita.config import CommonSettings
    from telephony_gateway.vapi_sim import ListenScript

    audio = np.random.default_rng(8).integers(-9000, 9000, (16000, 2), dtype=np.int16)  # 1 s, 16 kHz stereo
    vapi_id = str(uuid.uuid4())
    listen.scripts[vapi_id] = ListenScript(audio, speed=0)
    started = api.metric("lupita_context_api_gateway_listen_total", outcome="started")
    msg = in_progress(random_phone(), vapi_id, listen.url(vapi_id),
                      {"recordingConsent": True, "consentSource": "ivr_prompt_v2", "region": "oaxaca"})
    r = await asyncio.to_thread(api.post, msg)
    assert r.status_code == 200 and r.json()["ok"] is True
    await outcome(api, "started", started + 1)
    recs = await read_call(CommonSettings(), f"vapi-{vapi_id}")  # waits for the call's ended event
    assert recs.ended().reason == "completed"
    assert recs.leg_payload(PERSON) == audio[:, 0].astype("<i2").tobytes()
    assert recs.leg_payload(LUPITA) == audio[:, 1].astype("<i2").tobytes()
    assert recs.started().recording_consent is True and recs.started().consent_source == "ivr_prompt_v2"


async def test_consent_from_our_records_or_none_and_a_repeated_status(api, listen):
    from telephony_gateway.vapi_sim import ListenScript

    audio = np.zeros((16000, 2), dtype=np.int16)
    # no consent anywhere: the gateway is not asked (the audio never leaves VAPI)
    no = await outcome(api, "no_consent", 0)
    vapi_none = str(uuid.uuid4())
    listen.scripts[vapi_none] = ListenScript(audio, speed=1.0)
    assert (await asyncio.to_thread(api.post, in_progress(random_phone(), vapi_none, listen.url(vapi_none)))).status_code == 200
    refused = await asyncio.to_thread(api.post, in_progress(random_phone(), vapi_none, listen.url(vapi_none),
                                                            {"recordingConsent": False}))
    assert refused.status_code == 200
    await outcome(api, "no_consent", no + 2)

    # the person said yes in an earlier call (consent_records): listened; VAPI repeating the status: 409
    phone = random_phone()
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO consent_records (call_id, phone_number_hash, recording_consent, consent_source, "
                     "recorded_at) VALUES (NULL, %s, true, 'ivr_prompt_v2', now())", (person_of(phone),))
    vapi_id = str(uuid.uuid4())
    listen.scripts[vapi_id] = ListenScript(audio, speed=1.0, close=False)  # a call that goes on
    started, already = (api.metric("lupita_context_api_gateway_listen_total", outcome=o) for o in ("started", "already"))
    assert (await asyncio.to_thread(api.post, in_progress(phone, vapi_id, listen.url(vapi_id)))).status_code == 200
    await outcome(api, "started", started + 1)
    assert (await asyncio.to_thread(api.post, in_progress(phone, vapi_id, listen.url(vapi_id)))).status_code == 200
    await outcome(api, "already", already + 1)
    # no listen URL (VAPI's monitor plan has listening off)
    nourl = api.metric("lupita_context_api_gateway_listen_total", outcome="no_listen_url")
    await asyncio.to_thread(api.post, in_progress(phone, str(uuid.uuid4()), None, {"recordingConsent": True}))
    await outcome(api, "no_listen_url", nourl + 1)


async def test_a_gateway_that_does_not_answer_never_holds_the_webhook(migrated):
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)  # accepts in the kernel, never answers
    try:
        with ContextApi("context-api-gateway-stalled", {
                "LUPITA_CONTEXT_API_GATEWAY_URL": f"http://127.0.0.1:{stalled.getsockname()[1]}",
                "LUPITA_CONTEXT_API_GATEWAY_TOKEN": CONTROL_TOKEN,
                "LUPITA_CONTEXT_API_GATEWAY_TIMEOUT_MS": "8000"}) as api:
            r = await asyncio.to_thread(api.post, in_progress(random_phone(), str(uuid.uuid4()),
                                                              "ws://127.0.0.1:9/x/listen", {"recordingConsent": True}))
            assert r.status_code == 200 and r.json()["ok"] is True
            # answered while the gateway request was still pending: its outcome is counted only later,
            # when its own timeout runs out (had the webhook waited for it, it would be counted already)
            assert api.metric("lupita_context_api_gateway_listen_total", outcome="error") == 0
            await outcome(api, "error", 1)
    finally:
        stalled.close()
