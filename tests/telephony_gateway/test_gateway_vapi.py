"""VAPI live audio through the real gateway into a real bridge, read back from Kafka.

VAPI's side is a local listen socket (``telephony_gateway.vapi_sim``) speaking the documented
format: binary frames of interleaved PCM s16le (channel 0 the customer, channel 1 the assistant),
16 kHz, JSON text frames between them, ``Authorization: Bearer`` required when listen
authentication is on.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from bridgekit import LUPITA, PERSON, read_call
from gwkit import PHONE, Deltas, assert_on_one_clock, pcm_bytes, running_gateway
from lupita.config import CommonSettings
from telephony_gateway.vapi_listen import VapiCall
from telephony_gateway.vapi_sim import ListenScript, ListenServer

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

LISTEN_TOKEN = "test-vapi-public-key"


def vapi_bad(kind: str) -> tuple[str, dict]:
    return ("lupita_gateway_bad_input_total", {"source": "vapi", "kind": kind})


def vapi_outcome(name: str) -> tuple[str, dict]:
    return ("lupita_gateway_calls_total", {"source": "vapi", "outcome": name})


def stereo16(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-15000, 15000, (int(seconds * 16000), 2), dtype=np.int16)


async def listen(bridge, script: ListenScript, *, token: str = LISTEN_TOKEN, server_token: str = LISTEN_TOKEN,
                 **overrides):
    vapi_id = str(uuid.uuid4())
    server = await ListenServer(listen_token=server_token).start()
    server.scripts[vapi_id] = script
    try:
        async with running_gateway(bridge, bridge.token, **overrides) as gw:
            call = VapiCall(vapi_call_id=vapi_id, listen_url=server.url(vapi_id), phone=PHONE, consent=True,
                            consent_source="ivr_prompt_v2", region="oaxaca", listen_token=token)
            report = await gw.listen_vapi(call)
    finally:
        await server.close()
    return vapi_id, report, server


async def test_a_vapi_listen_stream_reaches_kafka_with_both_legs_exact_on_one_clock(bridge):
    audio = stereo16(3.0, seed=40)
    script = ListenScript(audio, chunk_bytes=1000, speed=1.0,  # frames not aligned to samples pairs or 20 ms
                          text_frames=[(0.5, {"type": "transcript", "role": "user"}), (1.0, {"type": "speech-update"})])
    d = Deltas(vapi_outcome("completed"), ("lupita_gateway_events_total", {"source": "vapi", "event": "transcript"}))
    vapi_id, report, _ = await listen(bridge, script)
    assert report.outcome == "completed", report
    recs = await read_call(CommonSettings(), f"vapi-{vapi_id}")
    started = recs.started()
    assert started.sample_rate_hz == 16000 and started.phone_hash and started.recording_consent
    assert recs.ended().reason == "completed"
    assert recs.leg_payload(PERSON) == pcm_bytes(audio[:, 0])  # channel 0 = the customer
    assert recs.leg_payload(LUPITA) == pcm_bytes(audio[:, 1])  # channel 1 = the assistant
    for leg in (LUPITA, PERSON):
        assert_on_one_clock(recs, leg, rate=16000)
    assert d(*vapi_outcome("completed")) == 1
    assert d("lupita_gateway_events_total", source="vapi", event="transcript") == 1


async def test_a_listen_socket_that_refuses_the_key_is_a_rejected_call(bridge):
    d = Deltas(vapi_outcome("rejected"))
    _, report, server = await listen(bridge, ListenScript(stereo16(0.2, 41)), token="wrong-key")
    assert report.outcome == "rejected" and server.refused == 1
    assert d(*vapi_outcome("rejected")) == 1


async def test_an_announced_format_the_gateway_does_not_take_is_refused(bridge):
    script = ListenScript(stereo16(0.5, 42), speed=0, start_message={
        "type": "start", "encoding": "linear16", "container": "raw", "sampleRate": 44100, "channels": 2})
    d = Deltas(vapi_bad("media_format"), vapi_outcome("media_format"))
    _, report, _ = await listen(bridge, script)
    assert report.outcome == "media_format"
    assert d(*vapi_bad("media_format")) == 1 and d(*vapi_outcome("media_format")) == 1


async def test_audio_faster_than_real_time_at_the_announced_rate_ends_the_call_with_media_format(bridge):
    # 16 kHz announced, but the audio comes at 4x real time (as a 64 kHz stream would)
    script = ListenScript(stereo16(12.0, 43), speed=4.0)
    d = Deltas(vapi_outcome("media_format"))
    vapi_id, report, _ = await listen(bridge, script, gateway_vapi_rate_check_seconds=1.0)
    assert report.outcome == "media_format"
    assert d(*vapi_outcome("media_format")) == 1
    assert (await read_call(CommonSettings(), f"vapi-{vapi_id}")).ended().reason == "media_format"


async def test_malformed_text_frames_are_counted_and_the_audio_is_whole(bridge):
    audio = stereo16(1.0, seed=44)
    script = ListenScript(audio, speed=0, text_frames=[(0.2, "{nope"), (0.4, "[1, 2]")])
    d = Deltas(vapi_bad("malformed_json"))
    vapi_id, report, _ = await listen(bridge, script, gateway_vapi_rate_check_seconds=0)
    assert report.outcome == "completed"
    assert d(*vapi_bad("malformed_json")) == 2
    recs = await read_call(CommonSettings(), f"vapi-{vapi_id}")
    assert recs.leg_payload(PERSON) == pcm_bytes(audio[:, 0]) and recs.leg_payload(LUPITA) == pcm_bytes(audio[:, 1])


async def test_a_stalled_listen_socket_is_ended_with_reason_stalled_keeping_what_arrived(bridge):
    audio = stereo16(0.5, seed=45)
    script = ListenScript(audio, speed=0, close=False)
    d = Deltas(vapi_bad("stalled"), vapi_outcome("stalled"))
    vapi_id, report, _ = await listen(bridge, script, gateway_idle_timeout_seconds=1.0, gateway_vapi_rate_check_seconds=0)
    assert report.outcome == "stalled"
    assert d(*vapi_bad("stalled")) == 1 and d(*vapi_outcome("stalled")) == 1
    recs = await read_call(CommonSettings(), f"vapi-{vapi_id}")
    assert recs.ended().reason == "stalled"
    assert recs.leg_payload(PERSON) == pcm_bytes(audio[:, 0])
