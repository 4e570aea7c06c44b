"""Chime SDK Voice Connector calls through the real gateway into a real bridge, read back from Kafka.

Chime's side: each leg's audio as MKV fragments (tags as Chime and KVS write them) served by a
local stand-in for KVS's GetDataEndpoint/GetMedia, read by the gateway with boto3; the streaming
events EventBridge would deliver are posted to the gateway's control API.
"""

from __future__ import annotations

import asyncio
import datetime
import json

import numpy as np
import pytest
from chimekit import T0_MS, build_call, chime_settings, ended, mono, post_events
from waits import await_for

from bridgekit import LUPITA, PERSON, read_call
from gwkit import Deltas, pcm_bytes, running_gateway, spans
from lupita.config import CommonSettings
from telephony_gateway import kvs_sim, mkv

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180),
              pytest.mark.usefixtures("chime_aws")]


def bad(kind: str) -> tuple[str, dict]:
    return ("lupita_gateway_bad_input_total", {"source": "chime", "kind": kind})


def outcome(name: str) -> tuple[str, dict]:
    return ("lupita_gateway_calls_total", {"source": "chime", "outcome": name})


def assert_contiguous_from(recs, leg: int, start_us: int) -> None:
    """The leg's records begin at ``start_us`` and each begins where the previous one ended."""
    expected = start_us
    for start, end in spans(recs, leg):
        assert start == expected, f"record at {start - start_us} µs, expected {expected - start_us} µs"
        expected = end


async def test_a_chime_call_reaches_kafka_with_both_legs_exact_and_aligned_by_producer_time(bridge, kvs):
    person, lupita = mono(3.0, 1), mono(2.8, 2)
    call = build_call(kvs, lupita, person, lupita_offset_ms=200)
    d = Deltas(outcome("completed"), ("lupita_gateway_events_total", {"source": "chime", "event": "started"}))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        status, body = await post_events(gw, call.events)
        assert (status, body) == (202, {"accepted": 2, "refused": []})
        [report] = await ended(gw, call)
    assert report.outcome == "completed", report
    recs = await read_call(CommonSettings(), call.key)
    started = recs.started()
    assert started.started_at_us == T0_MS * 1000  # the earlier leg's first frame
    assert started.sample_rate_hz == 8000 and started.phone_hash and started.recording_consent
    assert recs.ended().reason == "completed"
    assert recs.leg_payload(PERSON) == pcm_bytes(person)
    assert recs.leg_payload(LUPITA) == pcm_bytes(lupita)
    assert_contiguous_from(recs, PERSON, T0_MS * 1000)
    assert_contiguous_from(recs, LUPITA, (T0_MS + 200) * 1000)  # 200 ms later, as the producer times say
    assert d(*outcome("completed")) == 1
    assert d("lupita_gateway_events_total", source="chime", event="started") == 2
    # GetDataEndpoint, then GetMedia from the chunk containing the leg's start time less the margin
    # (boto3 sends the timestamp as epoch seconds)
    assert call.person.requests[0]["StartSelector"] == {"StartSelectorType": "SERVER_TIMESTAMP",
                                                        "StartTimestamp": T0_MS / 1000 - 10}


async def test_the_ended_event_ends_a_live_call_after_its_tail(bridge, kvs):
    person, lupita = mono(1.0, 3), mono(1.0, 4)
    call = build_call(kvs, lupita, person, live=True)
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        await await_for("both legs forwarded", lambda: gw.chime.sessions.get(call.key) is not None and
                        sum(gw.chime.sessions[call.key].report.frames.values()) == 100)
        status, _ = await post_events(gw, call.ended())
        assert status == 202
        [report] = await ended(gw, call)
    assert report.outcome == "completed"
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == pcm_bytes(lupita)


async def test_a_gateway_restart_resumes_the_call_after_the_checkpointed_fragment(bridge, kvs):
    """A crash: the process goes without a hand-off; the next one (same group, same topics) replays
    the call's STARTED events from the committed offset and goes on from the checkpoint topic."""
    person, lupita = mono(6.0, 5), mono(6.0, 6)
    call = build_call(kvs, lupita, person, lupita_fragment_ms=1000, hold_at=3)  # 1 s fragments; KVS pauses after 3
    overrides = chime_settings(kvs, gateway_chime_idle_seconds=30)
    first_person = int(call.events[0]["detail"]["startFragmentNumber"])
    first_lupita = int(call.events[1]["detail"]["startFragmentNumber"])

    def done_through(gw) -> dict:
        state = gw.chime.store.get(call.key) or {"legs": []}
        return {leg["isCaller"]: int(leg["doneThrough"]) for leg in state["legs"] if leg["doneThrough"]}

    async with running_gateway(bridge, bridge.token, **overrides) as gw:
        await post_events(gw, call.events)
        # fragments 0 and 1 of each leg are done (2 is open: its end shows only when 3 begins)
        await await_for("two fragments of each leg checkpointed",
                        lambda: done_through(gw) == {True: first_person + 1, False: first_lupita + 1}, timeout=30)
        await gw.chime.store.caught_up()  # our own writes read back from the topic
    # the process is gone (close() cuts the call like a crash): the checkpoint stays
    call.person.hold_at = call.lupita.hold_at = None
    async with running_gateway(bridge, bridge.token, **overrides) as gw2:
        [report] = await ended(gw2, call)
        state = gw2.chime.store.get(call.key)
    assert report.outcome == "completed" and report.call_id == f"{call.key}-p2", report
    assert state == {"part": 2, "done": True}  # over: a replay of its events starts nothing
    # the new process asked for the streams after the checkpointed fragments
    assert call.person.requests[-2]["StartSelector"] == {"StartSelectorType": "FRAGMENT_NUMBER",
                                                         "AfterFragmentNumber": str(first_person + 1)}
    part2 = await read_call(CommonSettings(), f"{call.key}-p2")
    # part 2 holds exactly the fragments after the checkpointed ones, on the same clock
    assert part2.leg_payload(PERSON) == pcm_bytes(person[16000:])
    assert part2.leg_payload(LUPITA) == pcm_bytes(lupita[16000:])
    assert part2.leg_chunks(PERSON)[0].start_ts_us == (T0_MS + 2000) * 1000
    assert part2.leg_chunks(LUPITA)[0].start_ts_us == (T0_MS + 2000) * 1000
    # part 1 (ended by the cut) holds everything through the checkpoint, in order, and at most
    # the fragment that was open at the cut beyond it
    part1 = await read_call(CommonSettings(), call.key)
    assert part1.ended().reason == "disconnect"
    for leg, audio in ((PERSON, person), (LUPITA, lupita)):
        got = part1.leg_payload(leg)
        assert got[:32000] == pcm_bytes(audio[:16000]) and len(got) <= 48000


async def test_the_checkpoint_topic_holds_the_number_encrypted_only(bridge, kvs):
    """Every checkpoint record on the broker: the person's number only as AES-GCM ciphertext."""
    from aiokafka import AIOKafkaConsumer

    call = build_call(kvs, mono(2.0, 7), mono(2.0, 8))
    settings = chime_settings(kvs)
    async with running_gateway(bridge, bridge.token, **settings) as gw:
        await post_events(gw, call.events)
        await ended(gw, call)
        topic = gw.chime_bus.checkpoints_topic
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=gw.settings.kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            values = []
            async def read():
                batch = await consumer.getmany(timeout_ms=200)
                values.extend(r.value for rs in batch.values() for r in rs if r.key == call.key.encode())
                return any(b'"done"' in v for v in values)
            await await_for("the call's checkpoints on the topic", read, timeout=30)
        finally:
            await consumer.stop()
    states = [json.loads(v) for v in values]
    assert states[0]["phone"] and states[-1] == {"part": 1, "done": True}
    digits = "529515550142"
    assert not any(digits in v.decode() or "951 555" in v.decode() for v in values)


async def test_the_stand_in_serves_each_start_selector_as_getmedia_documents_it(kvs):
    """FRAGMENT_NUMBER: the chunk *after* the fragment; SERVER_/PRODUCER_TIMESTAMP: the chunk
    *containing* the time — what the gateway's first-fragment guarantee is proved against."""
    import boto3
    from botocore.config import Config

    items = kvs_sim.fragments_of(mono(3.0, 30), first_number=500, start_ms=T0_MS, tags=kvs_sim.chime_tags("t", "c"))
    stream = kvs.add(kvs_sim.KvsStream(kvs_sim.stream_arn("selectors"), items))
    client = boto3.client("kinesis-video-media", endpoint_url=kvs.url, config=Config(region_name="us-east-1"))

    def first_number(selector: dict) -> str | None:
        body = client.get_media(StreamARN=stream.arn, StartSelector=selector)["Payload"].read()
        events = mkv.MkvStreamReader().feed(body)
        return next((e.values["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for e in events
                     if isinstance(e, mkv.Tags) and "AWS_KINESISVIDEO_FRAGMENT_NUMBER" in e.values), None)

    def at(ms: int):
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)

    cases = [
        ({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "500"}, "501"),
        ({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "499"}, "500"),
        # server timestamps are producer + 250 ms in the stand-in's fragments
        ({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": at(T0_MS + 1250)}, "501"),
        ({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": at(T0_MS + 1249)}, "500"),
        ({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": at(T0_MS - 10_000)}, "500"),
        ({"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": at(T0_MS + 2500)}, "502"),
        ({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "502"}, None),
    ]
    for selector, expected in cases:
        assert await asyncio.to_thread(first_number, selector) == expected, selector


async def test_the_first_fragment_is_read_when_the_start_time_falls_in_the_previous_calls_fragments(bridge, kvs):
    """A recycled stream: the previous call's last fragments precede ours; the start by server
    timestamp (10 s before startTime) serves them, they are skipped by number without a count,
    and our first fragment — the one a FRAGMENT_NUMBER start would skip — arrives whole."""
    person, lupita = mono(2.0, 31), mono(2.0, 32)
    call = build_call(kvs, lupita, person)
    for stream, first in ((call.person, 91343852333181431990), (call.lupita, 91343852333181436990)):
        previous = kvs_sim.fragments_of(mono(5.0, 33), first_number=first, start_ms=T0_MS - 6000,
                                        tags=kvs_sim.chime_tags("txn-before", "call-before"))
        stream.items[:0] = previous
    d = Deltas(bad("recycled_stream"), bad("duplicate"), outcome("completed"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed", report
    assert call.person.requests[0]["StartSelector"]["StartSelectorType"] == "SERVER_TIMESTAMP"
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == pcm_bytes(lupita)
    assert recs.started().started_at_us == T0_MS * 1000
    assert d(*bad("recycled_stream")) == 0 and d(*bad("duplicate")) == 0


async def test_a_recycled_stream_ends_that_leg_and_no_other_calls_audio_is_forwarded(bridge, kvs):
    person, lupita = mono(2.0, 7), mono(3.0, 8)
    call = build_call(kvs, lupita, person)
    other = kvs_sim.fragments_of(mono(1.0, 9), first_number=91343852333181432002, start_ms=T0_MS + 2000,
                                 tags=kvs_sim.chime_tags("txn-next", "call-next"))
    call.person.items += other  # the stream is reused by the next call after ours ended
    d = Deltas(bad("recycled_stream"), outcome("completed"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed"
    assert d(*bad("recycled_stream")) == 1
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person)  # nothing of the next call
    assert recs.leg_payload(LUPITA) == pcm_bytes(lupita)


# -- bad input, one test per class ------------------------------------------------------------------


async def test_a_track_in_another_codec_or_rate_ends_the_call_with_media_format(bridge, kvs):
    person = mono(1.0, 10)
    tags_of = lambda c: kvs_sim.chime_tags(c.transaction_id, c.call_id)  # noqa: E731
    call = build_call(kvs, mono(1.0, 11), person)
    call.person.items[:] = kvs_sim.fragments_of(person, first_number=int(call.person.items[0][0]), start_ms=T0_MS,
                                                tags=tags_of(call), rate=16000)
    d = Deltas(bad("media_format"), outcome("media_format"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "media_format"
    assert d(*bad("media_format")) >= 1 and d(*outcome("media_format")) == 1


async def test_malformed_mkv_costs_one_fragment_as_a_gap_and_other_calls_are_untouched(bridge, kvs):
    person, lupita = mono(3.0, 12), mono(3.0, 13)
    broken = build_call(kvs, lupita, person)
    number, data = broken.person.items[1]
    broken.person.items[1] = (number, data[:500] + bytes(range(256)) * 4 + data[-200:])
    clean = build_call(kvs, mono(2.0, 14), mono(2.0, 15))
    d = Deltas(bad("malformed_mkv"), ("lupita_gateway_gaps_total", {"source": "chime", "leg": "person"}))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, broken.events + clean.events)
        [report] = await ended(gw, broken)
        [clean_report] = await ended(gw, clean)
    assert report.outcome == "completed" and clean_report.outcome == "completed"
    assert d(*bad("malformed_mkv")) >= 1
    assert d("lupita_gateway_gaps_total", source="chime", leg="person") == 1
    recs = await read_call(CommonSettings(), broken.key)
    got = np.frombuffer(recs.leg_payload(PERSON), "<i2")
    # the first fragment whole, the damaged one lost (a gap: the next starts 1 s later), the third whole
    assert np.array_equal(got[:8000], person[:8000]) and np.array_equal(got[-8000:], person[16000:])
    assert recs.leg_payload(LUPITA) == pcm_bytes(lupita)
    later = [c for c in recs.leg_chunks(PERSON) if c.start_ts_us >= (T0_MS + 2000) * 1000]
    assert later and later[0].start_ts_us == (T0_MS + 2000) * 1000
    other = await read_call(CommonSettings(), clean.key)
    assert other.leg_payload(PERSON) == pcm_bytes(mono(2.0, 15)) and other.leg_payload(LUPITA) == pcm_bytes(mono(2.0, 14))


async def test_a_fragment_without_its_tags_is_skipped_and_counted(bridge, kvs):
    person, lupita = mono(3.0, 16), mono(3.0, 17)
    call = build_call(kvs, lupita, person)
    number = call.person.items[1][0]
    call.person.items[1] = (number, kvs_sim.fragment(person[8000:16000], fragment_number=number, producer_ts_ms=T0_MS + 1000,
                                                     tags=kvs_sim.chime_tags(call.transaction_id, call.call_id),
                                                     aws_tags={"AWS_KINESISVIDEO_FRAGMENT_NUMBER": number}))
    d = Deltas(bad("missing_tag"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed" and d(*bad("missing_tag")) == 1
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(np.concatenate([person[:8000], person[16000:]]))


async def test_duplicate_and_out_of_order_fragments_are_dropped_and_the_audio_is_exact(bridge, kvs):
    person, lupita = mono(3.0, 18), mono(3.0, 19)
    call = build_call(kvs, lupita, person)
    f = call.person.items
    call.person.items[:] = [f[0], f[1], f[1], f[0], f[2]]  # a repeat and an earlier one
    d = Deltas(bad("duplicate"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed" and d(*bad("duplicate")) == 2
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person)


async def test_a_stalled_stream_ends_the_call_with_stalled_keeping_what_arrived(bridge, kvs):
    person, lupita = mono(2.0, 20), mono(2.0, 21)
    call = build_call(kvs, lupita, person, stall_after=1)
    d = Deltas(bad("stalled"), outcome("stalled"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs, gateway_chime_idle_seconds=1)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "stalled"
    # each leg that times out counts once; under load the second leg's reader may end otherwise
    # (a reconnect in progress) after the first stall ended the call: one or both
    assert 1 <= d(*bad("stalled")) <= 2 and d(*outcome("stalled")) == 1
    recs = await read_call(CommonSettings(), call.key)
    assert recs.ended().reason == "stalled"
    assert recs.leg_payload(PERSON) == pcm_bytes(person[:8000])


async def test_unknown_and_malformed_events_are_refused_by_class(bridge, kvs):
    d = Deltas(bad("unknown_event"), bad("invalid_field"), bad("malformed_json"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        status, body = await post_events(gw, [
            {"source": "aws.chime", "detail-type": "Chime VoiceConnector Call Status", "detail": {}},
            kvs_sim.streaming_event("PAUSED", transaction_id="t", call_id="c"),
            kvs_sim.streaming_event("STARTED", transaction_id="t", call_id="c", stream_arn="not-an-arn", is_caller=True,
                                    start_fragment_number="1"),
        ])
        assert status == 202 and body == {"accepted": 0, "refused": ["unknown_event", "unknown_event", "invalid_field"]}
        status, _ = await post_events(gw, kvs_sim.streaming_event("ENDED", transaction_id="t", call_id="c"),
                                      token="wrong")
        assert status == 401
        import aiohttp
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{gw.control.port}/chime/events", data=b"{nope",
                                 headers={"Authorization": "Bearer test-control-token"}) as resp:
                assert resp.status == 400
        assert not gw.chime.sessions and not gw.chime.pending
    assert d(*bad("unknown_event")) == 2 and d(*bad("invalid_field")) == 1 and d(*bad("malformed_json")) == 1


async def test_a_leg_whose_partner_never_starts_runs_alone_and_is_counted(bridge, kvs):
    person = mono(1.0, 22)
    call = build_call(kvs, mono(1.0, 23), person)
    d = Deltas(bad("unpaired"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs, gateway_chime_pair_seconds=0.5)) as gw:
        await post_events(gw, call.events[:1])
        [report] = await ended(gw, call)
    assert report.outcome == "completed" and d(*bad("unpaired")) == 1
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == b""


async def test_a_failed_event_ends_a_live_call_as_disconnect_keeping_what_arrived(bridge, kvs):
    person, lupita = mono(1.0, 24), mono(1.0, 25)
    call = build_call(kvs, lupita, person, live=True)
    d = Deltas(outcome("disconnect"), ("lupita_gateway_events_total", {"source": "chime", "event": "failed"}))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        await await_for("both legs forwarded", lambda: gw.chime.sessions.get(call.key) is not None and
                        sum(gw.chime.sessions[call.key].report.frames.values()) == 100)
        await post_events(gw, call.ended("FAILED"))
        [report] = await ended(gw, call)
    assert report.outcome == "disconnect"
    assert d(*outcome("disconnect")) == 1 and d("lupita_gateway_events_total", source="chime", event="failed") == 1
    recs = await read_call(CommonSettings(), call.key)
    assert recs.ended().reason == "disconnect"
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == pcm_bytes(lupita)


async def test_a_drain_hands_a_live_chime_call_off_with_its_exact_point_checkpointed(bridge, kvs):
    """SIGTERM with no other pod: the call's part ends with reason ``handoff`` (not drained: Chime
    calls move at once), its checkpoint holds the exact point reached, and the next process goes on
    from there: part 1 + part 2 = the source on both legs, nothing twice."""
    person, lupita = mono(4.0, 26), mono(4.0, 27)
    call = build_call(kvs, lupita, person, live=True, speed=1.0, pieces=5)  # real time: the hand-off is mid-call
    settings = chime_settings(kvs, gateway_drain_seconds=0.5, gateway_chime_end_grace_seconds=3)
    d = Deltas(outcome("handoff"), ("lupita_gateway_chime_handoffs_total", {"direction": "out"}))
    async with running_gateway(bridge, bridge.token, **settings) as gw:
        await post_events(gw, call.events)
        await await_for("a second of both legs forwarded", lambda: gw.chime.sessions.get(call.key) is not None and
                        sum(gw.chime.sessions[call.key].report.frames.values()) >= 100)
        await gw.shutdown()  # what SIGTERM runs (the Chime call is handed off at once, not drained)
        [report] = await ended(gw, call)
        state = gw.chime.store.get(call.key)
    assert report.outcome == "handoff" and d(*outcome("handoff")) == 1
    assert d("lupita_gateway_chime_handoffs_total", direction="out") == 1
    assert state["part"] == 1 and state["opened"] and not state.get("done")
    part1 = await read_call(CommonSettings(), call.key)
    assert part1.ended().reason == "handoff"
    async with running_gateway(bridge, bridge.token, **settings) as gw2:
        status, _ = await post_events(gw2, call.ended())
        assert status == 202
        [report2] = await ended(gw2, call)
    assert report2.outcome == "completed" and report2.call_id == f"{call.key}-p2", report2
    part2 = await read_call(CommonSettings(), f"{call.key}-p2")
    for leg, audio in ((PERSON, person), (LUPITA, lupita)):
        got1, got2 = part1.leg_payload(leg), part2.leg_payload(leg)
        assert got1 and got2, leg
        assert got1 + got2 == pcm_bytes(audio), leg  # split at the hand-off: nothing lost, nothing twice
    assert part2.leg_chunks(PERSON)[0].start_ts_us == part1.leg_chunks(PERSON)[-1].start_ts_us + \
        len(part1.leg_chunks(PERSON)[-1].payload) // 2 * 125  # on the same clock, right after


# -- GetMedia's errors: HTTP and in-band ------------------------------------------------------------


def source_error(code: str) -> tuple[str, dict]:
    return ("lupita_gateway_source_errors_total", {"source": "chime", "code": code})


async def test_a_throttled_getmedia_is_asked_again_with_backoff_and_the_call_is_whole(bridge, kvs):
    person, lupita = mono(1.5, 40), mono(1.5, 41)
    call = build_call(kvs, lupita, person)
    call.person.http_errors = [(400, "ClientLimitExceededException"), (400, "ConnectionLimitExceededException")]
    d = Deltas(source_error("ClientLimitExceededException"), source_error("ConnectionLimitExceededException"),
               outcome("completed"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed", report
    # two refusals, then the stream from its start, then (the body ended) after its last fragment: nothing new
    assert [r["StartSelector"]["StartSelectorType"] for r in call.person.requests] == ["SERVER_TIMESTAMP"] * 3 + [
        "FRAGMENT_NUMBER"]
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == pcm_bytes(lupita)
    assert d(*source_error("ClientLimitExceededException")) == 1
    assert d(*source_error("ConnectionLimitExceededException")) == 1


async def test_a_stream_not_found_ends_that_leg_at_once_with_a_reason_and_the_other_leg_is_kept(bridge, kvs):
    person, lupita = mono(1.5, 42), mono(1.5, 43)
    call = build_call(kvs, lupita, person)
    call.lupita.http_errors = [(404, "ResourceNotFoundException")] * 3
    d = Deltas(source_error("ResourceNotFoundException"), outcome("disconnect"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "disconnect", report  # the source went away before its end
    assert len(call.lupita.requests) == 1  # not asked again
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == b""
    assert recs.ended().reason == "disconnect"
    assert d(*source_error("ResourceNotFoundException")) == 1


async def test_an_in_band_internal_error_reads_on_after_the_last_fragment_and_loses_nothing(bridge, kvs):
    person, lupita = mono(3.0, 44), mono(3.0, 45)
    call = build_call(kvs, lupita, person, lupita_fragment_ms=1000)
    call.person.inband_errors = {2: "5000"}  # GetMedia stops with error tags before the third fragment
    d = Deltas(source_error("kvs_5000"), outcome("completed"), bad("duplicate"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed", report
    first = int(call.events[0]["detail"]["startFragmentNumber"])
    assert call.person.requests[-2]["StartSelector"] == {"StartSelectorType": "FRAGMENT_NUMBER",
                                                         "AfterFragmentNumber": str(first + 1)}
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person) and recs.leg_payload(LUPITA) == pcm_bytes(lupita)
    assert d(*source_error("kvs_5000")) == 1 and d(*bad("duplicate")) == 0
    # the data endpoint is asked once per stream, not per read (the cache; an error that was not
    # in-band would drop it)
    assert len(call.person.requests) == 3 and kvs.endpoint_requests.count(call.person.arn) == 1


async def test_a_getmedia_refused_asks_for_the_data_endpoint_again(bridge, kvs):
    person, lupita = mono(1.0, 48), mono(1.0, 49)
    call = build_call(kvs, lupita, person)
    call.person.http_errors = [(400, "ClientLimitExceededException")]
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "completed", report
    # refused, asked again (endpoint dropped: asked again), the stream, the final read (cached)
    assert len(call.person.requests) == 3 and kvs.endpoint_requests.count(call.person.arn) == 2
    assert kvs.endpoint_requests.count(call.lupita.arn) == 1 and len(call.lupita.requests) == 2


async def test_an_in_band_fragment_not_found_ends_that_leg_with_what_arrived(bridge, kvs):
    person, lupita = mono(3.0, 46), mono(3.0, 47)
    call = build_call(kvs, lupita, person, lupita_fragment_ms=1000)
    call.lupita.inband_errors = {1: "4000"}
    d = Deltas(source_error("kvs_4000"))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await post_events(gw, call.events)
        [report] = await ended(gw, call)
    assert report.outcome == "disconnect", report
    assert len(call.lupita.requests) == 1
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person)
    assert recs.leg_payload(LUPITA) == pcm_bytes(lupita[:8000])  # the fragment before the error
    assert d(*source_error("kvs_4000")) == 1
