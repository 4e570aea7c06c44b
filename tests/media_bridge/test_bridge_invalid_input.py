"""Every invalid-input class gets its precise gRPC status and message on the real bridge, the
frames accepted before a violation still reach Kafka, and a good call running at the same time
on the same bridge is not disturbed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import REGISTRY

from bridgekit import (
    LUPITA, MULAW, PCM16, PERSON, CallClient, RunningBridge, assert_leg_exact, call_start, interleave,
    last_seqs, make_frames, read_call, run_good_call, start_bridge, stop_bridge,
)
from lupita.logs import JsonFormatter
from lupita.v1 import media_bridge_pb2 as mb

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

C = grpc.StatusCode


@dataclass
class Outcome:
    client: CallClient
    # frames accepted before the violation: they must be in Kafka, with an ended event
    kept: list[mb.AudioFrame] | None = None
    ended_reason: str | None = None


async def refused_start(b: RunningBridge, call_id: str, **start_kw) -> Outcome:
    c = b.client()
    await c.write(call_start(call_id, **start_kw))
    await c.status()
    return Outcome(c)


async def bad_frame_after(
    b: RunningBridge, call_id: str, good: list[mb.AudioFrame], bad: mb.AudioFrame | bytes, **start_kw
) -> Outcome:
    c = b.client()
    await c.start(call_start(call_id, **start_kw))
    await c.send(good)
    await c.write(bad)
    await c.status()
    return Outcome(c, kept=good, ended_reason="error")


def frames3():
    return interleave(make_frames(LUPITA, 3, seed=11), make_frames(PERSON, 2, seed=12))


async def case_oversize(b, cid, good_id):
    big = make_frames(PERSON, 1, rate=16000, frame_ms=200)[0]
    big.payload += b"\x00\x00"  # 3201 samples: one more than 200 ms at 16 kHz
    big.seq = 50
    return await bad_frame_after(b, cid, make_frames(PERSON, 2, rate=16000), big, rate=16000)


async def case_frame_not_whole_samples(b, cid, good_id):
    odd = mb.AudioFrame(leg=LUPITA, seq=4, capture_ts_us=0, payload=b"\x01" * 321)
    return await bad_frame_after(b, cid, frames3(), odd)


async def case_mulaw_8k_frame_sized_for_16k(b, cid, good_id):
    # a 200 ms frame of 16 kHz mu-law is 400 ms at the call's 8 kHz
    wrong = make_frames(LUPITA, 1, rate=16000, codec=MULAW, frame_ms=200, first_seq=9)[0]
    return await bad_frame_after(b, cid, make_frames(LUPITA, 3, codec=MULAW), wrong, codec=MULAW)


async def case_seq_repeated(b, cid, good_id):
    frames = frames3()
    repeat = make_frames(PERSON, 2, seed=99)[1]  # seq 2 again on the person leg
    return await bad_frame_after(b, cid, frames, repeat)


async def case_seq_backwards(b, cid, good_id):
    frames = make_frames(LUPITA, 3, first_seq=10)
    back = make_frames(LUPITA, 1, first_seq=7)[0]
    return await bad_frame_after(b, cid, frames, back)


async def case_audio_before_start(b, cid, good_id):
    c = b.client()
    await c.write(make_frames(PERSON, 1)[0])
    await c.status()
    return Outcome(c)


async def case_second_start(b, cid, good_id):
    c = b.client()
    await c.start(call_start(cid))
    frames = make_frames(PERSON, 2)
    await c.send(frames)
    await c.write(call_start(cid))
    await c.status()
    return Outcome(c, kept=frames, ended_reason="error")


async def case_message_after_end(b, cid, good_id):
    c = b.client()
    await c.start(call_start(cid))
    frames = frames3()
    await c.send(frames)
    await c.write(mb.CallEnd(reason="hangup"))
    await c.write(make_frames(LUPITA, 4)[3])
    await c.status()
    assert c.closed is not None  # the call itself was complete: CallClosed came first
    return Outcome(c, kept=frames, ended_reason="hangup")


async def case_half_close_without_end(b, cid, good_id):
    c = b.client()
    await c.start(call_start(cid))
    frames = frames3()
    await c.send(frames)
    await c.rpc.done_writing()
    await c.status()
    return Outcome(c, kept=frames, ended_reason="disconnect")


async def case_duplicate_live_id(b, cid, good_id):
    return await refused_start(b, good_id)  # the concurrent good call holds this id


async def case_recently_ended_id(b, cid, good_id):
    await run_good_call(b.client(), cid, make_frames(PERSON, 2))
    return await refused_start(b, cid)


async def case_credit_overrun(b, cid, good_id):
    # 11 frames of 1 ms with 10 credits: no chunk closes (11 ms < 100 ms), so no credit can
    # have come back and the 11th frame is one too many
    c = b.client()
    await c.start(call_start(cid))
    frames = make_frames(PERSON, 11, frame_ms=1)
    for f in frames:
        await c.write(f)
    await c.status()
    return Outcome(c, kept=frames[:10], ended_reason="error")


# Bytes a raw-gRPC client can put on the StreamCall method that are no ClientMessage at all.
NOT_PROTOBUF = b"\xff\xff\xff\xff\x0f"  # a field tag whose varint runs past 32 bits
# Well-formed wire format, but CallStart.call_id (a proto3 string) holds invalid UTF-8.
BAD_UTF8_CALL_ID = b"\x0a\x03\x0a\x01\xff"
UNDECODABLE = "bytes is not a valid lupita.v1.ClientMessage protobuf: Error parsing message"


async def raw_first(b, raw: bytes) -> Outcome:
    c = b.client()
    await c.write(raw)
    await c.status()
    return Outcome(c)


async def case_not_protobuf_after_frames(b, cid, good_id):
    return await bad_frame_after(b, cid, frames3(), NOT_PROTOBUF)


async def case_not_protobuf_after_end(b, cid, good_id):
    c = b.client()
    await c.start(call_start(cid))
    frames = frames3()
    await c.send(frames)
    await c.write(mb.CallEnd(reason="hangup"))
    await c.write(NOT_PROTOBUF)
    await c.status()
    assert c.closed is not None  # the call itself was complete: CallClosed came first
    return Outcome(c, kept=frames, ended_reason="hangup")


def no_token(b, cid, good_id):
    return _with_metadata(b, cid, ())


def _with_metadata(b, cid, metadata):
    async def run():
        c = CallClient(b.channel, None, metadata=metadata)
        await c.write(call_start(cid))
        await c.status()
        return Outcome(c)

    return run()


@dataclass
class Case:
    id: str
    code: grpc.StatusCode
    kind: str  # lupita_bridge_errors_total label
    fragment: str
    run: Callable[[RunningBridge, str, str], Awaitable[Outcome]]


CASES = [
    Case("call_id_dotdot_path", C.INVALID_ARGUMENT, "call_id", "starts with '.'", lambda b, c, g: refused_start(b, "../x")),
    Case("call_id_slash", C.INVALID_ARGUMENT, "call_id", "character 2 is '/'", lambda b, c, g: refused_start(b, "a/b")),
    Case("call_id_empty", C.INVALID_ARGUMENT, "call_id", "call_id is required", lambda b, c, g: refused_start(b, "")),
    Case("call_id_too_long", C.INVALID_ARGUMENT, "call_id", "it has 129 characters", lambda b, c, g: refused_start(b, "c" * 129)),
    Case("rate_44100", C.INVALID_ARGUMENT, "sample_rate", "sample_rate_hz must be 8000 or 16000, got 44100",
         lambda b, c, g: refused_start(b, c, rate=44100)),
    Case("codec_unknown", C.INVALID_ARGUMENT, "codec", "codec must be CODEC_PCM16 or CODEC_MULAW, got 9",
         lambda b, c, g: refused_start(b, c, codec=9)),
    Case("codec_unspecified", C.INVALID_ARGUMENT, "codec", "got CODEC_UNSPECIFIED", lambda b, c, g: refused_start(b, c, codec=0)),
    Case("phone_garbage", C.INVALID_ARGUMENT, "phone", "caller.phone_number is not a phone number",
         lambda b, c, g: refused_start(b, c, caller=mb.CallerMetadata(phone_number="llámame"))),
    Case("frame_oversize", C.INVALID_ARGUMENT, "payload", "frame of 3201 samples is longer than 200 ms (3200 samples at 16000 Hz",
         case_oversize),
    Case("frame_not_whole_pcm16_samples", C.INVALID_ARGUMENT, "payload",
         "frame payload of 321 bytes is not a whole number of 2-byte samples", case_frame_not_whole_samples),
    Case("frame_size_for_other_rate", C.INVALID_ARGUMENT, "payload", "frame of 3200 samples is longer than 200 ms (1600 samples at 8000 Hz",
         case_mulaw_8k_frame_sized_for_16k),
    Case("seq_repeated", C.INVALID_ARGUMENT, "seq", "frame seq 2 on leg person is not greater than the previous seq 2",
         case_seq_repeated),
    Case("seq_backwards", C.INVALID_ARGUMENT, "seq", "frame seq 7 on leg lupita is not greater than the previous seq 12",
         case_seq_backwards),
    Case("not_protobuf_first_message", C.INVALID_ARGUMENT, "undecodable", f"a message of 5 {UNDECODABLE}",
         lambda b, c, g: raw_first(b, NOT_PROTOBUF)),
    Case("invalid_utf8_in_call_id", C.INVALID_ARGUMENT, "undecodable", f"a message of 5 {UNDECODABLE}",
         lambda b, c, g: raw_first(b, BAD_UTF8_CALL_ID)),
    Case("not_protobuf_after_frames", C.INVALID_ARGUMENT, "undecodable", f"a message of 5 {UNDECODABLE}",
         case_not_protobuf_after_frames),
    Case("not_protobuf_after_end", C.INVALID_ARGUMENT, "undecodable", f"a message of 5 {UNDECODABLE}",
         case_not_protobuf_after_end),
    Case("audio_before_start", C.FAILED_PRECONDITION, "before_start", "AudioFrame before CallStart", case_audio_before_start),
    Case("second_start", C.FAILED_PRECONDITION, "second_start", "second CallStart", case_second_start),
    Case("message_after_end", C.FAILED_PRECONDITION, "after_end", "frame received after CallEnd", case_message_after_end),
    Case("half_close_without_end", C.FAILED_PRECONDITION, "no_end", "half-closed before CallEnd", case_half_close_without_end),
    Case("duplicate_live_call_id", C.ALREADY_EXISTS, "duplicate_call", "is already live on this bridge", case_duplicate_live_id),
    Case("recently_ended_call_id", C.ALREADY_EXISTS, "duplicate_call", "already ended on this bridge", case_recently_ended_id),
    Case("token_missing", C.UNAUTHENTICATED, "auth", "missing 'authorization: Bearer <token>' metadata", no_token),
    Case("token_wrong", C.UNAUTHENTICATED, "auth", "invalid bearer token",
         lambda b, c, g: _with_metadata(b, c, (("authorization", "Bearer not-a-token"),))),
    Case("token_not_bearer", C.UNAUTHENTICATED, "auth", "must be 'Bearer <token>'",
         lambda b, c, g: _with_metadata(b, c, (("authorization", f"Basic {b.token}"),))),
    Case("credit_overrun", C.RESOURCE_EXHAUSTED, "credits", "frame sent without credit (leg person seq 11)", case_credit_overrun),
]


def good_frames() -> list[mb.AudioFrame]:
    return interleave(make_frames(LUPITA, 12, seed=21), make_frames(PERSON, 12, seed=22))


async def check_outcome(bridge: RunningBridge, case: Case, out: Outcome, call_id: str) -> None:
    c = out.client
    assert c.code == case.code, f"{case.id}: {c.code} {c.details}"
    assert case.fragment in c.details, c.details
    # an Error message with the same code and text precedes the status
    assert [(e.code, e.message) for e in c.errors] == [(case.code.name, c.details)]
    if out.kept is not None:
        rec = await read_call(bridge.settings, call_id)
        assert rec.ended().reason == out.ended_reason
        for leg in (LUPITA, PERSON):
            assert_leg_exact(rec, leg, out.kept)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_invalid_input_gets_precise_status_and_good_call_is_unaffected(bridge, case, call_id):
    good_id = f"{call_id}-good"
    frames = good_frames()
    errors_before = REGISTRY.get_sample_value("lupita_bridge_errors_total", {"kind": case.kind})
    good = bridge.client()
    await good.start(call_start(good_id))
    await good.send(frames[:12])

    out = await case.run(bridge, call_id, good_id)

    await good.send(frames[12:])
    assert await good.end() == C.OK, good.details
    assert good.acked == last_seqs(frames) and good.errors == []
    assert (good.closed.frames_lupita, good.closed.frames_person) == (12, 12)
    await check_outcome(bridge, case, out, call_id)
    assert REGISTRY.get_sample_value("lupita_bridge_errors_total", {"kind": case.kind}) == errors_before + 1


async def test_all_violations_at_once_leave_a_concurrent_call_byte_exact_in_kafka(bridge, call_id):
    good_id = f"{call_id}-good"
    frames = good_frames()
    good = bridge.client()
    await good.start(call_start(good_id))
    await good.send(frames[:12])
    outs = await asyncio.gather(*(case.run(bridge, f"{call_id}-{i}", good_id) for i, case in enumerate(CASES)))
    await good.send(frames[12:])
    assert await good.end() == C.OK, good.details
    for i, (case, out) in enumerate(zip(CASES, outs)):
        await check_outcome(bridge, case, out, f"{call_id}-{i}")
    rec = await read_call(bridge.settings, good_id)
    assert rec.ended().reason == "hangup"
    assert [e.WhichOneof("event") for e in rec.lifecycle] == ["started", "ended"]  # the duplicate left no trace
    for leg in (LUPITA, PERSON):
        assert_leg_exact(rec, leg, frames)


async def test_undecodable_message_is_refused_counted_and_logged_once_without_its_bytes(bridge, call_id, caplog):
    # a whole CallStart (phone number included) followed by bytes that break the parse
    raw = mb.ClientMessage(start=call_start(call_id)).SerializeToString() + NOT_PROTOBUF
    assert b"555-0142" in raw
    errors_before = REGISTRY.get_sample_value("lupita_bridge_errors_total", {"kind": "undecodable"})
    rejected_before = REGISTRY.get_sample_value("lupita_bridge_calls_total", {"outcome": "rejected"})
    caplog.set_level(logging.INFO)

    c = (await raw_first(bridge, raw)).client

    assert c.code == C.INVALID_ARGUMENT, c.details
    assert c.details == f"a message of {len(raw)} {UNDECODABLE} with type 'lupita.v1.ClientMessage'"
    assert [(e.code, e.message) for e in c.errors] == [("INVALID_ARGUMENT", c.details)]
    assert REGISTRY.get_sample_value("lupita_bridge_errors_total", {"kind": "undecodable"}) == errors_before + 1
    assert REGISTRY.get_sample_value("lupita_bridge_calls_total", {"outcome": "rejected"}) == rejected_before + 1
    # the bridge logs the refusal once, and nothing (grpc included) logs the parse failure as an error
    refusals = [r for r in caplog.records if getattr(r, "kind", None) == "undecodable"]
    assert [(r.name, r.levelname, r.getMessage(), r.code, r.error) for r in refusals] == [
        ("media_bridge", "WARNING", "call refused", "INVALID_ARGUMENT", c.details)
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    text = "\n".join(JsonFormatter("media-bridge").format(r) for r in caplog.records) + c.details
    for leak in ("5550142", "555-0142", call_id, raw.hex(), NOT_PROTOBUF.hex(), "\\xff"):
        assert leak not in text


async def test_too_many_calls_is_resource_exhausted_and_the_live_call_goes_on(stack_env, call_id):
    small = await start_bridge(max_calls=1)
    try:
        frames = interleave(make_frames(LUPITA, 5), make_frames(PERSON, 5))
        live = small.client()
        await live.start(call_start(call_id))
        await live.send(frames[:4])
        out = await refused_start(small, f"{call_id}-2")
        assert out.client.code == C.RESOURCE_EXHAUSTED
        assert "already carries its maximum of 1 calls" in out.client.details
        await live.send(frames[4:])
        assert await live.end() == C.OK
        rec = await read_call(small.settings, call_id)
        assert_leg_exact(rec, PERSON, frames)
        # the refused id never started, so it may be used once a slot is free
        await run_good_call(small.client(), f"{call_id}-2", frames)
    finally:
        await stop_bridge(small)
