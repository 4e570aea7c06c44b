"""A valid two-leg call through the real bridge lands on the real Kafka byte-exact and in order."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from bridgekit import (
    LUPITA, MULAW, PCM16, PERSON, PHONE_FORMS, SERVING, assert_leg_exact, call_start, health_status, interleave,
    last_seqs, make_frames, read_call, read_topic, run_good_call, start_bridge, stop_bridge,
)
from lupita.privacy import decrypt_phone, phone_hash
from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
from lupita.v1 import audio_pb2, events_pb2

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("rate,codec", [(8000, PCM16), (16000, MULAW)], ids=["8k-pcm16", "16k-mulaw"])
async def test_two_leg_call_lands_byte_exact_in_order_per_leg(bridge, call_id, rate, codec):
    # 23 frames of 20 ms per leg: four 100 ms chunks and a 60 ms tail per leg; the legs are
    # interleaved unevenly (the person leg starts later) as a real adapter would send them
    lupita = make_frames(LUPITA, 23, rate=rate, codec=codec, seed=1)
    person = make_frames(PERSON, 23, rate=rate, codec=codec, seed=2, first_seq=100, t0_us=lupita[3].capture_ts_us)
    frames = lupita[:3] + interleave(lupita[3:], person)
    frames_before = metric("lupita_bridge_frames_total", leg="person")
    bytes_before = metric("lupita_bridge_bytes_total", leg="lupita")

    client = await run_good_call(bridge.client(), call_id, frames, rate=rate, codec=codec)

    assert client.accepted.call_id == call_id and client.accepted.chunk_ms == 100
    assert client.acked == last_seqs(frames)  # every frame acknowledged before CallClosed
    assert [m.WhichOneof("msg") for m in client.received][-1] == "closed"
    assert (client.closed.frames_lupita, client.closed.frames_person) == (23, 23)
    assert (client.closed.chunks_lupita, client.closed.chunks_person) == (5, 5)

    rec = await read_call(bridge.settings, call_id)
    assert_leg_exact(rec, LUPITA, frames)
    assert_leg_exact(rec, PERSON, frames)
    assert len(rec.chunk_partitions) == 1  # keyed by call id: one partition, one order
    for chunk in rec.chunks:
        assert (chunk.call_id, chunk.sample_rate_hz, chunk.codec) == (call_id, rate, codec)
    # >= 100 ms per record except each leg's tail
    samples_per_byte = 0.5 if codec == PCM16 else 1
    durations = [len(c.payload) * samples_per_byte / rate for c in rec.leg_chunks(LUPITA)]
    assert durations[:-1] == [0.1] * 4 and durations[-1] == pytest.approx(0.06)

    assert [e.WhichOneof("event") for e in rec.lifecycle] == ["started", "ended"]
    ended = rec.ended()
    assert ended.reason == "hangup"
    assert (ended.frames_lupita, ended.frames_person, ended.chunks_lupita, ended.chunks_person) == (23, 23, 5, 5)

    assert metric("lupita_bridge_frames_total", leg="person") - frames_before == 23
    assert metric("lupita_bridge_bytes_total", leg="lupita") - bytes_before == sum(len(f.payload) for f in lupita)


async def test_started_event_carries_hash_and_ciphertext_never_the_clear_number(bridge, call_id):
    frames = interleave(make_frames(LUPITA, 5), make_frames(PERSON, 5))
    await run_good_call(bridge.client(), call_id, frames, consent=True)
    rec = await read_call(bridge.settings, call_id)

    started = rec.started()
    s = bridge.settings
    assert started.phone_hash == phone_hash(PHONE_FORMS[0].decode(), s.hmac_key_bytes)
    assert decrypt_phone(started.phone_encrypted, s.encryption_key_bytes) == PHONE_FORMS[0].decode()
    assert started.recording_consent is True and started.consent_source == "ivr_prompt_v2"
    assert (started.region, started.family_plan_id, started.language) == ("oaxaca", "plan-7", "es-MX")
    assert started.direction == audio_pb2.DIRECTION_OUTBOUND
    assert (started.sample_rate_hz, started.codec) == (8000, PCM16)
    assert started.bridge_instance == "bridge-under-test"

    # no form of the clear number in any key or value of either topic (every call of this run
    # used the same number)
    for topic in (s.topic(CALL_LIFECYCLE), s.topic(AUDIO_CHUNKS)):
        records = await read_topic(topic)
        assert records
        for r in records:
            for form in PHONE_FORMS:
                assert form not in r.key and form not in r.value, f"clear phone number in {topic}@{r.offset}"
    # and this call's lifecycle values decode as CallLifecycle keyed by its call id (the session's
    # topic also holds other tests' records, bad ones on purpose among them)
    mine = [r for r in await read_topic(s.topic(CALL_LIFECYCLE)) if r.key == call_id.encode()]
    assert len(mine) == 2  # started, ended
    for r in mine:
        assert events_pb2.CallLifecycle.FromString(r.value).call_id.encode() == r.key


async def test_frames_are_acked_only_as_kafka_takes_them_and_credits_return(bridge, call_id):
    client = bridge.client()
    accepted = await client.start(call_start(call_id))
    assert accepted.credits == 10
    # 4 frames of one leg: less than a chunk, so nothing is published and nothing is acked
    await client.send(make_frames(PERSON, 4))
    assert client.acked == {} and client.credits == 6
    # the 5th frame closes a 100 ms chunk: once Kafka has it, the 5 frames are acked and
    # their 5 credits come back
    await client.send(make_frames(PERSON, 5)[4:])
    await client.wait_acked({PERSON: 5})
    await client.wait_until(lambda: client.credits == 10, "5 credits back")
    assert await client.end() == grpc.StatusCode.OK
    rec = await read_call(bridge.settings, call_id)
    assert rec.leg_payload(PERSON) == b"".join(f.payload for f in make_frames(PERSON, 5))


async def test_health_service_reports_serving(bridge):
    assert await health_status(bridge.channel) == SERVING
    assert await health_status(bridge.channel, "") == SERVING


async def test_a_paused_client_gets_its_partial_chunk_acked_after_the_linger_time(stack_env, call_id):
    quick = await start_bridge(max_linger_ms=50)
    try:
        client = quick.client()
        await client.start(call_start(call_id))
        frames = make_frames(LUPITA, 2)  # 40 ms: less than a chunk
        await client.send(frames)
        # no more frames come: the bridge publishes the 40 ms it holds, then acks them
        await client.wait_acked({LUPITA: 2})
        await client.wait_until(lambda: client.credits == 10, "credits back")
        assert await client.end() == grpc.StatusCode.OK
        rec = await read_call(quick.settings, call_id)
        assert [c.frame_count for c in rec.leg_chunks(LUPITA)] == [2]
        assert_leg_exact(rec, LUPITA, frames)
    finally:
        await stop_bridge(quick)
