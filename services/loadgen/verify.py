"""Read back what the bridge published, to prove that no frame was lost.

:class:`ChunkTally` (plain code) counts AudioChunk records and frames per (call, leg) and can
rebuild each leg's bytes; :class:`LifecycleTally` keeps the started/ended events;
:func:`scan_topic` (aiokafka, no consumer group) reads a whole topic from the beginning up to
the end offsets it finds at start, calling a function per record; :func:`read_calls` does both
topics for a set of call ids.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from lupita.v1 import events_pb2


@dataclass
class LegTally:
    records: int = 0
    frames: int = 0
    chunk_seqs: list[int] = field(default_factory=list)
    payloads: dict[int, bytes] = field(default_factory=dict)  # chunk_seq -> payload (if kept)

    def audio(self) -> bytes:
        """The leg's payload bytes in chunk order (needs ``keep_payload``)."""
        return b"".join(self.payloads[k] for k in sorted(self.payloads))


class ChunkTally:
    """Counts ``audio.chunks`` records of the calls of interest (others are ignored)."""

    def __init__(self, call_ids: Iterable[str] | None = None, *, keep_payload: bool = False) -> None:
        self.call_ids = set(call_ids) if call_ids is not None else None
        self.keep_payload = keep_payload
        self.legs: dict[str, dict[int, LegTally]] = defaultdict(lambda: defaultdict(LegTally))
        self.records = 0  # records of the calls of interest
        self.ignored = 0

    def add(self, value: bytes) -> None:
        try:
            chunk = events_pb2.AudioChunk.FromString(value)
        except DecodeError:
            if self.call_ids is None:
                raise
            self.ignored += 1  # another client's record (e.g. a test's deliberately bad one): not ours
            return
        if self.call_ids is not None and chunk.call_id not in self.call_ids:
            self.ignored += 1
            return
        tally = self.legs[chunk.call_id][chunk.leg]
        tally.records += 1
        tally.frames += chunk.frame_count
        tally.chunk_seqs.append(chunk.chunk_seq)
        if self.keep_payload:
            tally.payloads[chunk.chunk_seq] = chunk.payload
        self.records += 1

    def frames_of(self, call_id: str) -> int:
        return sum(t.frames for t in self.legs.get(call_id, {}).values())

    def frames_of_leg(self, call_id: str, leg: int) -> int:
        legs = self.legs.get(call_id, {})
        return legs[leg].frames if leg in legs else 0

    def records_of(self, call_id: str) -> int:
        return sum(t.records for t in self.legs.get(call_id, {}).values())

    def gaps(self) -> int:
        """Chunk sequence numbers missing per (call, leg): chunk_seq runs 0..n-1 without holes."""
        return sum(
            max(t.chunk_seqs) + 1 - len(set(t.chunk_seqs))
            for legs in self.legs.values()
            for t in legs.values()
            if t.chunk_seqs
        )

    def duplicates(self) -> int:
        """Chunks seen more than once (same call, leg, chunk_seq)."""
        return sum(len(t.chunk_seqs) - len(set(t.chunk_seqs)) for legs in self.legs.values() for t in legs.values())

    def mismatches(self, frames_sent: dict[str, int]) -> dict[str, tuple[int, int]]:
        """Calls whose frame count in Kafka differs from what was sent: ``{call_id: (sent, in_kafka)}``."""
        return {
            cid: (sent, self.frames_of(cid)) for cid, sent in frames_sent.items() if self.frames_of(cid) != sent
        }


@dataclass(frozen=True)
class Ended:
    reason: str
    frames: int  # both legs
    chunks: int  # both legs


class LifecycleTally:
    """Collects ``call.lifecycle`` events of the calls of interest (started ids, ended summaries)."""

    def __init__(self, call_ids: Iterable[str] | None = None) -> None:
        self.call_ids = set(call_ids) if call_ids is not None else None
        self.started: set[str] = set()
        self.ended: dict[str, Ended] = {}

    def add(self, value: bytes) -> None:
        try:
            event = events_pb2.CallLifecycle.FromString(value)
        except DecodeError:
            if self.call_ids is None:
                raise
            return  # another client's record: not one of the calls of interest
        if self.call_ids is not None and event.call_id not in self.call_ids:
            return
        kind = event.WhichOneof("event")
        if kind == "started":
            self.started.add(event.call_id)
        elif kind == "ended":
            e = event.ended
            self.ended[event.call_id] = Ended(
                e.reason, e.frames_lupita + e.frames_person, e.chunks_lupita + e.chunks_person
            )


async def scan_topic(
    bootstrap: str, topic: str, on_value: Callable[[bytes], None], *, timeout_s: float = 120.0
) -> int:
    """Feed every record of ``topic`` (present when the scan starts) to ``on_value``; returns the count."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: every partition is assigned to this consumer
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} not found")
            await asyncio.sleep(0.1)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        count = 0
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not finish within {timeout_s:.0f}s")
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=10000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < end[tp]:
                        on_value(record.value)
                        count += 1
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return count
    finally:
        await consumer.stop()


async def read_calls(
    bootstrap: str,
    chunks_topic: str,
    lifecycle_topic: str,
    call_ids: Iterable[str],
    *,
    keep_payload: bool = False,
    timeout_s: float = 120.0,
) -> tuple[ChunkTally, LifecycleTally]:
    """Everything the bridge published for ``call_ids`` (read after the calls have been acked)."""
    ids = list(call_ids)
    chunks = ChunkTally(ids, keep_payload=keep_payload)
    lifecycle = LifecycleTally(ids)
    await scan_topic(bootstrap, chunks_topic, chunks.add, timeout_s=timeout_s)
    await scan_topic(bootstrap, lifecycle_topic, lifecycle.add, timeout_s=timeout_s)
    return chunks, lifecycle
