"""What every stage reads off Kafka, decoded and validated (pure): the legs, call ids, and the
``audio.chunks`` / ``call.lifecycle`` records. A record that cannot be used raises
:class:`BadRecord`, whose ``reason`` labels the stage's bad-record metric and the dead letter."""

from __future__ import annotations

import re

from lupita.audio import BYTES_PER_SAMPLE, SUPPORTED_RATES
from lupita.v1 import audio_pb2, events_pb2

LEGS = (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)  # also the WAV channel order: left, right
LEG_NAMES = {audio_pb2.LEG_LUPITA: "lupita", audio_pb2.LEG_PERSON: "person"}
LEG_BY_NAME = {name: leg for leg, name in LEG_NAMES.items()}

# speech.segments kinds (the vad writes them, the transcriber reads them)
KIND_FINAL = events_pb2.SEGMENT_KIND_FINAL
KIND_PARTIAL = events_pb2.SEGMENT_KIND_PARTIAL
KIND_END = events_pb2.SEGMENT_KIND_END_OF_LEG
KIND_NAMES = {KIND_FINAL: "final", KIND_PARTIAL: "partial", KIND_END: "end_of_leg"}

CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# Upper bound on chunk sequence numbers and counts (4 h of 100 ms chunks is 144,000).
MAX_CHUNK_SEQ = 10_000_000

class BadRecord(ValueError):
    """A Kafka record a stage cannot use; the message says exactly why and ``reason`` is
    its class for metrics: undecodable, invalid_call_id, key_mismatch or invalid."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def is_valid_call_id(call_id: str) -> bool:
    return bool(CALL_ID_RE.fullmatch(call_id or ""))


# -- decoding and validation of input records ----------------------------------------------------


def parse_chunk(key: bytes | None, value: bytes | None) -> events_pb2.AudioChunk:
    """Decode and validate an ``audio.chunks`` record; raises BadRecord."""
    chunk = events_pb2.AudioChunk()
    try:
        chunk.ParseFromString(value or b"")
    except Exception as exc:  # protobuf raises DecodeError (a Message.Error subclass)
        raise BadRecord(
            f"audio.chunks value is not an AudioChunk protobuf: {exc}", reason="undecodable"
        ) from exc
    check_call_id(chunk.call_id, key)
    if chunk.leg not in LEGS:
        raise BadRecord(f"chunk {chunk.chunk_seq}: leg {chunk.leg} is not LEG_LUPITA or LEG_PERSON")
    if chunk.sample_rate_hz not in SUPPORTED_RATES:
        raise BadRecord(f"chunk {chunk.chunk_seq}: sample rate {chunk.sample_rate_hz} not in {SUPPORTED_RATES}")
    width = BYTES_PER_SAMPLE.get(chunk.codec)
    if width is None:
        raise BadRecord(f"chunk {chunk.chunk_seq}: codec {chunk.codec} is not PCM16 or MULAW")
    if not chunk.payload or len(chunk.payload) % width:
        raise BadRecord(
            f"chunk {chunk.chunk_seq}: payload of {len(chunk.payload)} bytes is not a positive "
            f"whole number of {width}-byte samples"
        )
    if chunk.chunk_seq >= MAX_CHUNK_SEQ:
        raise BadRecord(f"chunk_seq {chunk.chunk_seq} is beyond {MAX_CHUNK_SEQ}")
    if chunk.start_ts_us <= 0:
        raise BadRecord(f"chunk {chunk.chunk_seq}: start_ts_us must be a positive unix time")
    return chunk


def parse_lifecycle(key: bytes | None, value: bytes | None) -> events_pb2.CallLifecycle:
    """Decode and validate a ``call.lifecycle`` record; raises BadRecord."""
    event = events_pb2.CallLifecycle()
    try:
        event.ParseFromString(value or b"")
    except Exception as exc:
        raise BadRecord(
            f"call.lifecycle value is not a CallLifecycle protobuf: {exc}", reason="undecodable"
        ) from exc
    check_call_id(event.call_id, key)
    kind = event.WhichOneof("event")
    if kind is None:
        raise BadRecord("call.lifecycle event has neither started nor ended")
    if kind == "started":
        s = event.started
        if s.sample_rate_hz not in SUPPORTED_RATES:
            raise BadRecord(f"started: sample rate {s.sample_rate_hz} not in {SUPPORTED_RATES}")
        if s.codec not in BYTES_PER_SAMPLE:
            raise BadRecord(f"started: codec {s.codec} is not PCM16 or MULAW")
        if s.started_at_us <= 0:
            raise BadRecord("started: started_at_us must be a positive unix time")
    else:
        e = event.ended
        if max(e.chunks_lupita, e.chunks_person) > MAX_CHUNK_SEQ:
            raise BadRecord(f"ended: chunk counts beyond {MAX_CHUNK_SEQ}")
        if e.ended_at_us <= 0:
            raise BadRecord("ended: ended_at_us must be a positive unix time")
    return event


def check_call_id(call_id: str, key: bytes | None) -> None:
    if not is_valid_call_id(call_id):
        # Never echo the raw value: it may be anything, including a phone number.
        raise BadRecord(
            f"call_id is not a valid call id (pattern {CALL_ID_RE.pattern}, length {len(call_id)})",
            reason="invalid_call_id",
        )
    # An unkeyed record may sit on another partition than the rest of its call: refused too.
    if key != call_id.encode():
        raise BadRecord(
            "record key differs from the call_id in the value (records are keyed by call_id)",
            reason="key_mismatch",
        )
