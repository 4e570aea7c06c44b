"""A non-Python Kafka client (kcat, librdkafka) reads the bridge's records: the wire format on
Kafka is plain protobuf (no framing, no schema-registry prefix), keyed by the UTF-8 call id."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from bridgekit import LUPITA, PERSON, interleave, make_frames, read_call, run_good_call
from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
from lupita.v1 import events_pb2

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

KCAT = shutil.which("kcat") or "/usr/bin/kcat"


def kcat_records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of ``topic``: kcat prints key, value size, raw value."""
    out = subprocess.run(
        [KCAT, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", r"%k\n%S\n%s"],
        capture_output=True, timeout=60, check=True,
    ).stdout
    records, pos = [], 0
    while pos < len(out):
        nl = out.index(b"\n", pos)
        key = out[pos:nl]
        nl2 = out.index(b"\n", nl + 1)
        size = int(out[nl + 1:nl2])
        value = out[nl2 + 1:nl2 + 1 + size]
        assert len(value) == size, "truncated kcat output"
        records.append((key, value))
        pos = nl2 + 1 + size
    return records


async def test_kcat_reads_audio_chunks_and_lifecycle_as_plain_protobuf(bridge, call_id):
    frames = interleave(make_frames(LUPITA, 12, seed=5), make_frames(PERSON, 12, seed=6))
    await run_good_call(bridge.client(), call_id, frames)
    await read_call(bridge.settings, call_id)  # the ended event is in: every chunk is too
    s = bridge.settings

    chunks = [
        events_pb2.AudioChunk.FromString(v)
        for k, v in await asyncio.to_thread(kcat_records, s.kafka_bootstrap, s.topic(AUDIO_CHUNKS))
        if k == call_id.encode()
    ]
    for leg in (LUPITA, PERSON):
        mine = [c for c in chunks if c.leg == leg]
        assert [c.chunk_seq for c in mine] == [0, 1, 2]
        assert b"".join(c.payload for c in mine) == b"".join(f.payload for f in frames if f.leg == leg)
        assert all(c.call_id == call_id and c.sample_rate_hz == 8000 for c in mine)

    events = [
        events_pb2.CallLifecycle.FromString(v)
        for k, v in await asyncio.to_thread(kcat_records, s.kafka_bootstrap, s.topic(CALL_LIFECYCLE))
        if k == call_id.encode()
    ]
    assert [e.WhichOneof("event") for e in events] == ["started", "ended"]
    assert events[1].ended.frames_person == 12 and events[1].ended.chunks_lupita == 3
