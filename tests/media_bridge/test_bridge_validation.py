"""The bridge's protocol rules, as a table: every violation class -> its gRPC status code."""

from __future__ import annotations

import grpc
import pytest

from lupita.v1 import audio_pb2, media_bridge_pb2 as mb
from media_bridge.settings import BridgeSettings
from media_bridge.validation import (
    CallProtocol,
    CallRegistry,
    Violation,
    check_bearer,
    check_call_id,
    parse_client_message,
)

PHONE = "+52 (951) 123-4567"
C = grpc.StatusCode


def start(**kw) -> mb.ClientMessage:
    caller = mb.CallerMetadata(phone_number=kw.pop("phone", PHONE), region="oaxaca")
    fields = dict(
        call_id="call-1",
        direction=audio_pb2.DIRECTION_OUTBOUND,
        sample_rate_hz=8000,
        codec=audio_pb2.CODEC_PCM16,
        recording_consent=True,
        caller=caller,
    )
    fields.update(kw)
    return mb.ClientMessage(start=mb.CallStart(**fields))


def frame(leg=audio_pb2.LEG_PERSON, seq=1, ts=1_000_000, payload=b"\x00\x01" * 160) -> mb.ClientMessage:
    return mb.ClientMessage(frame=mb.AudioFrame(leg=leg, seq=seq, capture_ts_us=ts, payload=payload))


def end(**kw) -> mb.ClientMessage:
    return mb.ClientMessage(end=mb.CallEnd(reason="hangup", **kw))


def run(*msgs, credits=50, max_frame_ms=200):
    p = CallProtocol(max_frame_ms=max_frame_ms, initial_credits=credits)
    for m in msgs:
        p.check(m)
    return p


# (case id, messages, expected code, a fragment of the message)
CASES = [
    ("empty_call_id", [start(call_id="")], C.INVALID_ARGUMENT, "call_id is required"),
    ("slash_in_call_id", [start(call_id="a/b")], C.INVALID_ARGUMENT, "character 2 is '/'"),
    ("dotdot_call_id", [start(call_id="..")], C.INVALID_ARGUMENT, "starts with '.'"),
    ("dot_in_call_id", [start(call_id="a.b")], C.INVALID_ARGUMENT, "'.'"),
    ("space_in_call_id", [start(call_id="a b")], C.INVALID_ARGUMENT, "' '"),
    ("unicode_call_id", [start(call_id="llamada-ñ")], C.INVALID_ARGUMENT, "'ñ'"),
    ("leading_dash_call_id", [start(call_id="-abc")], C.INVALID_ARGUMENT, "starts with '-'"),
    ("long_call_id", [start(call_id="a" * 129)], C.INVALID_ARGUMENT, "129 characters"),
    ("rate_44100", [start(sample_rate_hz=44100)], C.INVALID_ARGUMENT, "8000 or 16000, got 44100"),
    ("rate_missing", [start(sample_rate_hz=0)], C.INVALID_ARGUMENT, "sample_rate_hz"),
    ("codec_unspecified", [start(codec=audio_pb2.CODEC_UNSPECIFIED)], C.INVALID_ARGUMENT, "CODEC_UNSPECIFIED"),
    ("codec_unknown", [start(codec=7)], C.INVALID_ARGUMENT, "got 7"),
    ("direction_unspecified", [start(direction=0)], C.INVALID_ARGUMENT, "direction"),
    ("phone_missing", [start(phone="")], C.INVALID_ARGUMENT, "phone_number is required"),
    ("phone_garbage", [start(phone="call me")], C.INVALID_ARGUMENT, "not a phone number"),
    ("started_at_negative", [start(started_at_us=-1)], C.INVALID_ARGUMENT, "started_at_us"),
    ("empty_message", [mb.ClientMessage()], C.INVALID_ARGUMENT, "none of start, frame, end"),
    ("frame_before_start", [frame()], C.FAILED_PRECONDITION, "AudioFrame before CallStart"),
    ("end_before_start", [end()], C.FAILED_PRECONDITION, "CallEnd before CallStart"),
    ("second_start", [start(), start()], C.FAILED_PRECONDITION, "second CallStart"),
    ("frame_after_end", [start(), end(), frame()], C.FAILED_PRECONDITION, "after CallEnd"),
    ("end_after_end", [start(), end(), end()], C.FAILED_PRECONDITION, "after CallEnd"),
    ("leg_unspecified", [start(), frame(leg=0)], C.INVALID_ARGUMENT, "LEG_UNSPECIFIED"),
    ("seq_zero", [start(), frame(seq=0)], C.INVALID_ARGUMENT, "seq must be >= 1"),
    ("seq_repeated", [start(), frame(seq=3), frame(seq=3)], C.INVALID_ARGUMENT, "seq 3 on leg person is not greater than the previous seq 3"),
    ("seq_backwards", [start(), frame(seq=5), frame(seq=4)], C.INVALID_ARGUMENT, "not greater"),
    ("capture_ts_negative", [start(), frame(ts=-5)], C.INVALID_ARGUMENT, "capture_ts_us"),
    ("payload_empty", [start(), frame(payload=b"")], C.INVALID_ARGUMENT, "payload is empty"),
    ("payload_odd_pcm16", [start(), frame(payload=b"\x00" * 321)], C.INVALID_ARGUMENT, "whole number of 2-byte samples"),
    ("frame_too_long", [start(), frame(payload=b"\x00\x00" * 1601)], C.INVALID_ARGUMENT, "longer than 200 ms"),
    ("frame_too_long_16k_mulaw", [start(sample_rate_hz=16000, codec=audio_pb2.CODEC_MULAW), frame(payload=b"\xff" * 3201)], C.INVALID_ARGUMENT, "longer than 200 ms"),
    ("ended_at_negative", [start(), end(ended_at_us=-1)], C.INVALID_ARGUMENT, "ended_at_us"),
]


@pytest.mark.parametrize("msgs,code,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_violation_maps_to_status(msgs, code, fragment):
    with pytest.raises(Violation) as info:
        run(*msgs)
    assert info.value.code == code
    assert fragment in info.value.message


def test_violation_messages_never_contain_the_phone_number():
    for phone in ("+5295112345678901234", "abc"):
        with pytest.raises(Violation) as info:
            run(start(phone=phone))
        assert phone not in info.value.message
        assert "95112345678901234" not in info.value.message


@pytest.mark.parametrize("data", [
    b"\xff\xff\xff\xff\x0f",                                   # a tag whose varint overflows
    b"\x0a\x05",                                                # a length past the end
    b"\x0a\x03\x0a\x01\xff",                                    # invalid UTF-8 in CallStart.call_id
    start().SerializeToString() + b"\xff\xff\xff\xff\x0f",         # a valid start, then garbage
], ids=["varint_overflow", "truncated", "bad_utf8_string", "start_then_garbage"])
def test_bytes_that_are_no_client_message_become_an_invalid_argument_violation(data):
    v = parse_client_message(data)  # returned, not raised (see its docstring)
    assert isinstance(v, Violation)
    assert (v.code, v.kind) == (C.INVALID_ARGUMENT, "undecodable")
    assert v.message.startswith(f"a message of {len(data)} bytes is not a valid lupita.v1.ClientMessage protobuf: ")
    assert "9511234567" not in v.message and data.hex() not in v.message


def test_valid_bytes_parse_to_the_client_message():
    for m in (start(), frame(), end(), mb.ClientMessage()):
        assert parse_client_message(m.SerializeToString()) == m


def test_valid_call_passes_and_legs_are_independent():
    p = run(
        start(),
        frame(leg=audio_pb2.LEG_PERSON, seq=10),
        frame(leg=audio_pb2.LEG_LUPITA, seq=1),
        frame(leg=audio_pb2.LEG_PERSON, seq=12),  # a gap is allowed (frames lost upstream)
        frame(leg=audio_pb2.LEG_LUPITA, seq=2),
        end(),
    )
    assert p.state == CallProtocol.ENDED
    assert p.start.phone == "+529511234567"  # normalised
    assert p.last_seq == {audio_pb2.LEG_PERSON: 12, audio_pb2.LEG_LUPITA: 2}


@pytest.mark.parametrize("rate,codec,payload", [
    (8000, audio_pb2.CODEC_PCM16, b"\x00\x00" * 1600),   # exactly 200 ms
    (16000, audio_pb2.CODEC_PCM16, b"\x00\x00" * 3200),
    (8000, audio_pb2.CODEC_MULAW, b"\xff" * 1),          # one sample
    (16000, audio_pb2.CODEC_MULAW, b"\xff" * 3200),
])
def test_frame_size_limits_accept_up_to_max_frame_ms(rate, codec, payload):
    run(start(sample_rate_hz=rate, codec=codec), frame(payload=payload))


def test_call_id_rules_accept_the_documented_alphabet():
    for ok in ("a", "A9", "call_2026-11-24_0001", "x" * 128, "0"):
        check_call_id(ok)


def test_frames_beyond_credits_are_resource_exhausted_until_granted():
    p = run(start(), frame(seq=1), frame(seq=2), credits=2)
    with pytest.raises(Violation) as info:
        p.check(frame(seq=3))
    assert info.value.code == C.RESOURCE_EXHAUSTED
    p = run(start(), frame(seq=1), frame(seq=2), credits=2)
    p.grant(1)
    p.check(frame(seq=3))
    with pytest.raises(Violation):
        p.check(frame(seq=4))


def test_registry_refuses_live_and_recently_ended_ids_and_too_many_calls():
    reg = CallRegistry(max_calls=2, recent_size=2)
    reg.admit("a")
    with pytest.raises(Violation) as info:
        reg.admit("a")
    assert info.value.code == C.ALREADY_EXISTS and "already live" in info.value.message
    reg.admit("b")
    with pytest.raises(Violation) as info:
        reg.admit("c")
    assert info.value.code == C.RESOURCE_EXHAUSTED
    reg.release("a")
    with pytest.raises(Violation) as info:
        reg.admit("a")
    assert info.value.code == C.ALREADY_EXISTS and "already ended" in info.value.message
    reg.admit("c")
    reg.release("b")
    reg.release("c")  # recent = [b, c]: "a" fell out of the bounded LRU
    reg.admit("a")
    reg.release("a", remember=False)  # a call that never started may retry
    reg.admit("a")


@pytest.mark.parametrize("metadata,fragment", [
    ((), "missing"),
    ((("authorization", "Bearer nope"),), "invalid bearer token"),
    ((("authorization", "Basic dG9rZW4="),), "must be 'Bearer <token>'"),
    ((("authorization", "Bearer "),), "must be 'Bearer <token>'"),
])
def test_bearer_token_rejections_are_unauthenticated(metadata, fragment):
    with pytest.raises(Violation) as info:
        check_bearer(metadata, ("tok-1", "tok-2"))
    assert info.value.code == C.UNAUTHENTICATED
    assert fragment in info.value.message


def test_bearer_token_accepts_any_configured_token():
    check_bearer((("user-agent", "x"), ("authorization", "Bearer tok-2")), ("tok-1", "tok-2"))
    check_bearer((("authorization", b"bearer tok-1"),), ("tok-1",))


def test_settings_refuse_to_start_without_tokens_or_with_too_few_credits():
    with pytest.raises(ValueError, match="LUPITA_BRIDGE_TOKENS is empty"):
        BridgeSettings(bridge_tokens="")
    assert BridgeSettings(bridge_tokens="", allow_unauthenticated=True).tokens() == ()
    assert BridgeSettings(bridge_tokens=" a, b ,").tokens() == ("a", "b")
    with pytest.raises(ValueError, match="must be >= 20"):
        BridgeSettings(bridge_tokens="a", chunk_ms=200, initial_credits=19)
    BridgeSettings(bridge_tokens="a", chunk_ms=20, initial_credits=2)
