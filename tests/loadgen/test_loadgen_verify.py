"""Counting what the bridge published (plain code over protobuf records, no Kafka)."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from lupita.v1 import audio_pb2, events_pb2
from loadgen.verify import ChunkTally, Ended, LifecycleTally

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON


def chunk(call_id: str, leg: int, chunk_seq: int, frames: int = 5, payload: bytes = b"") -> bytes:
    return events_pb2.AudioChunk(
        call_id=call_id, leg=leg, chunk_seq=chunk_seq, frame_count=frames,
        first_frame_seq=1 + chunk_seq * frames, last_frame_seq=(chunk_seq + 1) * frames,
        payload=payload or bytes([chunk_seq]) * 4,
    ).SerializeToString()


def test_counts_frames_and_records_per_call_and_leg_and_ignores_other_calls():
    tally = ChunkTally(["a", "b"])
    for seq in range(3):
        tally.add(chunk("a", LUPITA, seq))
        tally.add(chunk("a", PERSON, seq, frames=4))
    tally.add(chunk("b", PERSON, 0, frames=2))
    tally.add(chunk("other", LUPITA, 0))
    assert tally.records == 7 and tally.ignored == 1
    assert tally.frames_of("a") == 27 and tally.frames_of("b") == 2 and tally.frames_of("other") == 0
    assert tally.frames_of_leg("a", PERSON) == 12 and tally.frames_of_leg("b", LUPITA) == 0
    assert tally.records_of("a") == 6
    assert tally.mismatches({"a": 27, "b": 3, "c": 1}) == {"b": (3, 2), "c": (1, 0)}


def test_duplicates_and_gaps_in_chunk_sequence_are_counted():
    tally = ChunkTally()
    for seq in (0, 1, 1, 3):  # 1 twice, 2 missing
        tally.add(chunk("a", LUPITA, seq))
    assert tally.duplicates() == 1 and tally.gaps() == 1
    clean = ChunkTally()
    for seq in (1, 0, 2):  # order does not matter
        clean.add(chunk("a", LUPITA, seq))
    assert clean.duplicates() == 0 and clean.gaps() == 0


def test_leg_audio_is_rebuilt_in_chunk_order_when_payloads_are_kept():
    tally = ChunkTally(keep_payload=True)
    for seq in (2, 0, 1):
        tally.add(chunk("a", PERSON, seq, payload=f"<{seq}>".encode()))
    assert tally.legs["a"][PERSON].audio() == b"<0><1><2>"


def test_lifecycle_tally_keeps_started_ids_and_ended_summaries_of_its_calls():
    tally = LifecycleTally(["a"])
    tally.add(events_pb2.CallLifecycle(call_id="a", started=events_pb2.CallStarted()).SerializeToString())
    tally.add(events_pb2.CallLifecycle(
        call_id="a",
        ended=events_pb2.CallEnded(reason="completed", frames_lupita=5, frames_person=4,
                                   chunks_lupita=1, chunks_person=1),
    ).SerializeToString())
    tally.add(events_pb2.CallLifecycle(call_id="z", ended=events_pb2.CallEnded(reason="x")).SerializeToString())
    assert tally.started == {"a"}
    assert tally.ended == {"a": Ended("completed", 9, 2)}


def test_another_clients_undecodable_record_on_the_shared_topic_is_not_one_of_ours():
    tally, life = ChunkTally(["a"]), LifecycleTally(["a"])
    tally.add(b"\xff\xff\xff\xff\x0f")  # e.g. a test's deliberately bad record
    life.add(b"\xff\xff\xff\xff\x0f")
    tally.add(chunk("a", LUPITA, 0))
    assert tally.records == 1 and tally.ignored == 1 and not life.started
    with pytest.raises(DecodeError):  # counting everything: a record that is not a chunk is an error
        ChunkTally().add(b"\xff\xff\xff\xff\x0f")
