"""Twilio Media Streams through the real gateway into a real bridge, read back from Kafka.

Each test plays Twilio's side with the documented messages (``telephony_gateway.twilio_sim``)
and checks what the bridge published for the call: both legs byte-exact after mu-law's own loss,
in order, on one clock; then one test per class of bad input, each counted, each losing nothing
else (the good frames of the same call, and other calls, arrive whole).
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from bridgekit import LUPITA, PERSON, read_call
from gwkit import (
    PARAMS, Deltas, assert_on_one_clock, bad, mulaw_round_trip, outcome, pcm_bytes, play, random_stereo,
    running_gateway, sample, signed_as, spans,
)
from lupita.config import CommonSettings
from telephony_gateway import twilio_messages as tw
from telephony_gateway import twilio_sim

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


def twilio_call(seconds: float = 1.0, seed: int = 0, **kw) -> tuple[np.ndarray, twilio_sim.TwilioCall]:
    stereo = random_stereo(seconds, seed)
    return stereo, twilio_sim.build_call(stereo, PARAMS, **kw)


def media_positions(call: twilio_sim.TwilioCall) -> list[int]:
    return [i for i, _, _, _ in call.media]


async def records(call: twilio_sim.TwilioCall, call_id: str | None = None):
    return await read_call(CommonSettings(), call_id or f"twilio-{call.call_sid}")


def assert_leg(recs, leg: int, expected: np.ndarray) -> None:
    chunks = recs.leg_chunks(leg)
    assert [c.chunk_seq for c in chunks] == list(range(len(chunks)))
    assert recs.leg_payload(leg) == pcm_bytes(expected)


# --- the happy path ---------------------------------------------------------------------------------


async def test_a_twilio_stream_reaches_kafka_with_both_legs_exact_after_mulaw_on_one_clock(bridge):
    stereo, call = twilio_call(1.0, seed=1, dtmf="5", mark="greeting-done")
    d = Deltas(outcome("completed"), ("lupita_gateway_events_total", {"source": "twilio", "event": "dtmf"}),
               ("lupita_gateway_frames_total", {"source": "twilio", "leg": "person"}))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, call)
    assert result.close_code == 1000, result.close_reason
    recs = await records(call)
    # identity: the vendor's call id is in ours; the caller's number only hashed/encrypted
    started = recs.started()
    assert started.phone_hash and started.phone_encrypted and started.recording_consent
    assert started.sample_rate_hz == 8000 and started.codec == 1  # CODEC_PCM16: decoded at the gateway
    assert recs.ended().reason == "completed"
    # 50 Twilio frames of 20 ms per leg, joined into bridge frames of 100 ms (the default)
    assert recs.ended().frames_person == recs.ended().frames_lupita == 10
    assert_leg(recs, LUPITA, mulaw_round_trip(stereo[:, 0]))  # outbound track = Lupita
    assert_leg(recs, PERSON, mulaw_round_trip(stereo[:, 1]))  # inbound track = the person
    # one clock: both legs start at the call start, and every chunk sits where its audio belongs
    for leg in (LUPITA, PERSON):
        assert recs.leg_chunks(leg)[0].first_frame_seq == 1
        assert_on_one_clock(recs, leg)
    assert d(*outcome("completed")) == 1
    assert d("lupita_gateway_events_total", source="twilio", event="dtmf") == 1
    assert d("lupita_gateway_frames_total", source="twilio", leg="person") == 50


# --- order, duplicates, gaps ------------------------------------------------------------------------


async def test_out_of_order_messages_are_put_back_in_order_and_counted(bridge):
    stereo, call = twilio_call(1.0, seed=2)
    pos = media_positions(call)
    msgs = list(call.messages)
    for a in range(0, 40, 8):  # swap a few neighbouring media messages (both tracks involved)
        i, j = pos[a], pos[a + 3]
        msgs[i], msgs[j] = msgs[j], msgs[i]
    d = Deltas(("lupita_gateway_reordered_total", {"source": "twilio"}))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1000
    recs = await records(call)
    assert_leg(recs, LUPITA, mulaw_round_trip(stereo[:, 0]))
    assert_leg(recs, PERSON, mulaw_round_trip(stereo[:, 1]))
    assert d("lupita_gateway_reordered_total", source="twilio") >= 5


async def test_duplicate_and_late_sequence_numbers_are_dropped_and_counted(bridge):
    stereo, call = twilio_call(1.0, seed=3)
    pos = media_positions(call)
    msgs = list(call.messages)
    dup = msgs[pos[10]]
    msgs.insert(pos[12], dup)  # the same message again, two later: duplicate
    d = Deltas(bad("duplicate"), bad("late"))
    async with running_gateway(bridge, bridge.token, gateway_reorder_window=4) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1000
    recs = await records(call)
    assert_leg(recs, LUPITA, mulaw_round_trip(stereo[:, 0]))
    assert_leg(recs, PERSON, mulaw_round_trip(stereo[:, 1]))
    assert d(*bad("duplicate")) == 1

    # late: a message held back past the reorder window is given up (a gap), then dropped on arrival
    stereo, call = twilio_call(1.0, seed=4)
    pos = media_positions(call)
    msgs = list(call.messages)
    held = msgs.pop(pos[20])  # person or lupita frame 11
    msgs.insert(pos[20] + 10, held)  # arrives 10 messages later (window 4)
    track, chunk = call.media[20][1], call.media[20][2]
    async with running_gateway(bridge, bridge.token, gateway_reorder_window=4) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1000
    assert d(*bad("late")) == 1
    recs = await records(call)
    leg = LUPITA if track == "outbound" else PERSON
    column = 0 if track == "outbound" else 1
    expected = mulaw_round_trip(stereo[:, column]).copy()
    lost = slice((chunk - 1) * 160, chunk * 160)
    kept = np.delete(expected, np.arange(lost.start, lost.stop))
    assert recs.leg_payload(leg) == pcm_bytes(kept)  # everything but the given-up frame, in order
    # the hole is marked for the recorder: the leg's audio stops where the frame began and resumes
    # where it ended, and the frame seq skips a number there
    started = recs.started().started_at_us
    lost_from, lost_to = started + (chunk - 1) * 20_000, started + chunk * 20_000
    leg_spans = spans(recs, leg)
    assert any(end == lost_from for _, end in leg_spans) and any(start == lost_to for start, _ in leg_spans)
    assert all(end <= lost_from or start >= lost_to for start, end in leg_spans)
    after = next(c for c in recs.leg_chunks(leg) if c.start_ts_us == lost_to)
    before = next(c for c in recs.leg_chunks(leg) if c.start_ts_us + len(c.payload) // 2 * 125 == lost_from)
    assert after.first_frame_seq == before.last_frame_seq + 2


async def test_lost_frames_become_a_marked_and_counted_gap_on_their_leg_only(bridge):
    stereo, call = twilio_call(1.0, seed=5)
    lost = {i for i, track, chunk, _ in call.media if track == "inbound" and 11 <= chunk <= 15}  # 100 ms
    msgs = [m for i, m in enumerate(call.messages) if i not in lost]
    d = Deltas(("lupita_gateway_gaps_total", {"source": "twilio", "leg": "person"}),
               ("lupita_gateway_gap_seconds_total", {"source": "twilio", "leg": "person"}),
               ("lupita_gateway_gaps_total", {"source": "twilio", "leg": "lupita"}))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1000
    recs = await records(call)
    assert_leg(recs, LUPITA, mulaw_round_trip(stereo[:, 0]))
    person = mulaw_round_trip(stereo[:, 1])
    assert recs.leg_payload(PERSON) == pcm_bytes(np.concatenate([person[:1600], person[2400:]]))
    started = recs.started().started_at_us
    person_spans = spans(recs, PERSON)
    assert any(end == started + 200_000 for _, end in person_spans)  # audio up to 200 ms,
    assert any(start == started + 300_000 for start, _ in person_spans)  # then from 300 ms
    assert all(end <= started + 200_000 or start >= started + 300_000 for start, end in person_spans)
    assert_on_one_clock(recs, LUPITA)
    assert d("lupita_gateway_gaps_total", source="twilio", leg="person") == 1
    assert d("lupita_gateway_gap_seconds_total", source="twilio", leg="person") == pytest.approx(0.1)
    assert d("lupita_gateway_gaps_total", source="twilio", leg="lupita") == 0


# --- bad messages inside a call: counted, skipped, nothing else lost --------------------------------


async def test_malformed_unknown_binary_and_invalid_messages_are_counted_and_the_call_goes_on(bridge):
    stereo, call = twilio_call(1.0, seed=6)
    pos = media_positions(call)
    msgs = list(call.messages)
    junk = [
        (pos[5], "{not json"),  # malformed_json
        (pos[6], json.dumps([1, 2, 3])),  # malformed_json (not an object)
        (pos[7], json.dumps({"event": "transcription", "streamSid": call.stream_sid})),  # unknown_event
        (pos[8], b"\x00\x01binary"),  # binary_frame
        (pos[9], json.dumps({"event": "media", "sequenceNumber": "9999", "streamSid": call.stream_sid,
                             "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "%%%"}})),  # invalid_field
        (pos[10], json.dumps(tw.media_message(9998, "MZ" + "0" * 32, "inbound", 1, 0, b"\xff" * 160))),  # stream_sid
        (pos[11], json.dumps(tw.start_message(9997, call.stream_sid, call.call_sid, account_sid=call.account_sid,
                                              tracks=("inbound",), custom_parameters={}))),  # second_start
    ]
    for at, message in sorted(junk, reverse=True):
        msgs.insert(at, message)
    msgs.insert(1, json.dumps(tw.mark_message(1, call.stream_sid, "early")))  # before_start (after connected)
    kinds = ("malformed_json", "unknown_event", "binary_frame", "invalid_field", "stream_sid", "second_start", "before_start")
    d = Deltas(*(bad(k) for k in kinds))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1000, result.close_reason
    recs = await records(call)
    assert_leg(recs, LUPITA, mulaw_round_trip(stereo[:, 0]))
    assert_leg(recs, PERSON, mulaw_round_trip(stereo[:, 1]))
    assert recs.ended().reason == "completed"
    assert {k: d(*bad(k)) for k in kinds} == {
        "malformed_json": 2, "unknown_event": 1, "binary_frame": 1, "invalid_field": 1, "stream_sid": 1,
        "second_start": 1, "before_start": 1,
    }


async def test_an_oversize_payload_is_dropped_as_a_gap_and_counted(bridge):
    stereo, call = twilio_call(1.0, seed=7)
    pos = media_positions(call)
    msgs = list(call.messages)
    i, track, chunk, ts = call.media[30]
    msgs[pos[30]] = tw.media_message(int(msgs[pos[30]]["sequenceNumber"]), call.stream_sid, track, chunk, ts,
                                     b"\xff" * 8 * 250)  # 250 ms of mu-law in one frame
    d = Deltas(bad("oversize_frame"))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1000
    assert d(*bad("oversize_frame")) == 1
    recs = await records(call)
    leg, column = (LUPITA, 0) if track == "outbound" else (PERSON, 1)
    expected = mulaw_round_trip(stereo[:, column])
    assert recs.leg_payload(leg) == pcm_bytes(np.delete(expected, np.arange((chunk - 1) * 160, chunk * 160)))


# --- bad streams: refused or ended with a reason, counted -------------------------------------------


async def test_a_start_announcing_another_media_format_is_refused_before_any_bridge_call(bridge):
    _, call = twilio_call(0.2, seed=8)
    msgs = list(call.messages)
    msgs[1]["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}
    d = Deltas(bad("media_format"), outcome("media_format"), ("lupita_gateway_format_mismatches_total", {"source": "twilio"}))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1003 and "format" in result.close_reason
    assert d(*bad("media_format")) == 1 and d(*outcome("media_format")) == 1
    assert d("lupita_gateway_format_mismatches_total", source="twilio") == 1


async def test_audio_that_does_not_match_the_announced_rate_ends_the_call_with_reason_media_format(bridge):
    # 16 kHz mu-law (320 bytes per 20 ms) under an 8 kHz start
    rng = np.random.default_rng(9)
    stereo16 = rng.integers(-9000, 9000, (16000, 2), dtype=np.int16)
    call = twilio_sim.build_call(stereo16[:8000], PARAMS)  # the right messages, then the wrong payloads
    from lupita.audio import mulaw_encode

    msgs = list(call.messages)
    for i, track, chunk, ts in call.media:
        col = twilio_sim.COLUMN_TRACKS.index(track)
        payload = mulaw_encode(stereo16[(chunk - 1) * 320:chunk * 320, col])
        msgs[i] = tw.media_message(int(msgs[i]["sequenceNumber"]), call.stream_sid, track, chunk, ts, payload)
    d = Deltas(bad("media_format"), outcome("media_format"))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1003
    assert d(*bad("media_format")) >= 1 and d(*outcome("media_format")) == 1
    recs = await records(call)
    assert recs.ended().reason == "media_format"  # the bridge call ended with the gateway's reason


async def test_a_message_over_the_size_limit_ends_that_call_and_not_a_concurrent_one(bridge):
    stereo, good = twilio_call(1.0, seed=10)
    _, victim = twilio_call(1.0, seed=11)
    msgs = list(victim.messages)
    msgs.insert(media_positions(victim)[10], json.dumps({"event": "mark", "streamSid": victim.stream_sid,
                                                         "mark": {"name": "x" * 70_000}}))
    d = Deltas(bad("oversize_message"), outcome("oversize_message"))
    async with running_gateway(bridge, bridge.token, gateway_max_message_bytes=64 * 1024) as gw:
        r_good, r_victim = await asyncio.gather(play(gw, good, speed=4.0), play(gw, msgs))
    assert r_victim.close_code == 1009
    assert d(*bad("oversize_message")) == 1 and d(*outcome("oversize_message")) == 1
    assert (await records(victim)).ended().reason == "oversize_message"
    assert r_good.close_code == 1000
    recs = await records(good)
    assert_leg(recs, LUPITA, mulaw_round_trip(stereo[:, 0]))
    assert_leg(recs, PERSON, mulaw_round_trip(stereo[:, 1]))


async def test_a_stalled_socket_is_ended_after_the_idle_timeout_with_reason_stalled(bridge):
    stereo, call = twilio_call(1.0, seed=12)
    msgs = call.messages[:media_positions(call)[20]]  # half the call, then silence on the socket, no stop
    d = Deltas(bad("stalled"), outcome("stalled"))
    async with running_gateway(bridge, bridge.token, gateway_idle_timeout_seconds=1.0) as gw:
        result = await play(gw, msgs, close_timeout_s=30)
    assert result.close_code == 1008 and "stalled" in result.close_reason
    assert d(*bad("stalled")) == 1 and d(*outcome("stalled")) == 1
    recs = await records(call)
    assert recs.ended().reason == "stalled"
    assert recs.leg_payload(LUPITA) == pcm_bytes(mulaw_round_trip(stereo[:1600, 0]))  # what arrived is kept


async def test_a_wrong_or_missing_signature_is_refused_at_the_upgrade(bridge):
    _, call = twilio_call(0.2, seed=13)
    d = Deltas(bad("signature"))
    async with running_gateway(bridge, bridge.token) as gw:
        with pytest.raises(InvalidStatus) as wrong:
            await play(gw, call, auth_token="not-the-account-token")
        with pytest.raises(InvalidStatus) as missing:
            await play(gw, call, auth_token="")
        with pytest.raises(InvalidStatus) as other_url:  # signed for another URL
            await play(gw, call, sign_as=signed_as(gw) + "-elsewhere")
    assert {e.value.response.status_code for e in (wrong, missing, other_url)} == {403}
    assert d(*bad("signature")) == 3


@pytest.mark.parametrize("phone", [None, "12", "+52 951 555 0142 ext 99999999"], ids=["missing", "too-short", "junk"])
async def test_a_start_without_a_usable_phone_number_is_refused_and_the_number_is_never_logged(bridge, caplog, phone):
    _, call = twilio_call(0.2, seed=14)
    msgs = list(call.messages)
    params = {k: v for k, v in PARAMS.items() if k != "phone"}
    if phone is not None:
        params["phone"] = phone
    msgs[1]["start"]["customParameters"] = params
    d = Deltas(bad("custom_parameters"), outcome("rejected"))
    async with running_gateway(bridge, bridge.token) as gw:
        result = await play(gw, msgs)
    assert result.close_code == 1008
    assert d(*bad("custom_parameters")) == 1 and d(*outcome("rejected")) == 1
    assert "555" not in caplog.text and "0142" not in caplog.text


# --- the bridge's side --------------------------------------------------------------------------------


async def test_a_call_the_bridge_refuses_is_closed_with_the_bridges_reason(bridge):
    stereo, call = twilio_call(0.4, seed=15)
    d = Deltas(outcome("bridge_error"), ("lupita_gateway_bridge_errors_total", {"source": "twilio", "code": "ALREADY_EXISTS"}))
    async with running_gateway(bridge, bridge.token) as gw:
        first = await play(gw, call)
        again = await play(gw, call)  # the same CallSid: the bridge refuses a reused call id
    assert first.close_code == 1000
    assert again.close_code == 1011 and "ALREADY_EXISTS" in again.close_reason
    assert d(*outcome("bridge_error")) == 1
    assert d("lupita_gateway_bridge_errors_total", source="twilio", code="ALREADY_EXISTS") == 1


async def test_a_bridge_lost_mid_call_ends_the_call_with_reason_bridge_error(stack_env):
    from bridgekit import start_bridge, stop_bridge

    own = await start_bridge(initial_credits=50, max_linger_ms=250)
    stereo, call = twilio_call(20.0, seed=16)
    d = Deltas(outcome("bridge_error"))
    async with running_gateway(own, own.token) as gw:
        task = asyncio.create_task(play(gw, call, speed=1.0))
        from waits import await_for

        await await_for("frames to reach the bridge", lambda: sample("lupita_bridge_frames_total", leg="person") > 0
                        and gw.sessions and next(iter(gw.sessions)).report.frames.get("person", 0) >= 20, timeout=15)
        await stop_bridge(own)  # the bridge goes away under a live call
        result = await asyncio.wait_for(task, 30)
    assert result.close_code == 1011 and "bridge" in result.close_reason
    assert d(*outcome("bridge_error")) == 1


async def test_without_a_serving_bridge_the_gateway_is_not_ready_and_a_call_is_closed_with_unavailable(stack_env):
    import urllib.error
    import urllib.request

    from procs import free_port

    class NoBridge:  # a port nothing listens on
        target = f"127.0.0.1:{free_port()}"

    _, call = twilio_call(0.2, seed=17)
    d = Deltas(outcome("bridge_error"), ("lupita_gateway_bridge_errors_total", {"source": "twilio", "code": "UNAVAILABLE"}))
    async with running_gateway(NoBridge, "any-token") as gw:
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{gw.port}/readyz", timeout=5)
        live = await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{gw.port}/livez", timeout=5)
        assert live.status == 200
        result = await play(gw, call)
    assert not_ready.value.code == 503
    assert result.close_code == 1011 and "UNAVAILABLE" in result.close_reason
    assert d(*outcome("bridge_error")) == 1
    assert d("lupita_gateway_bridge_errors_total", source="twilio", code="UNAVAILABLE") == 1
