"""Read back what the bridge published, to prove that no frame was lost.

:class:`ChunkTally` (plain code) counts AudioChunk records and frames per (call, leg) and can
rebuild each leg's bytes; :func:`scan_topic` (aiokafka, no consumer group) reads a whole topic
from the beginning up to the end offsets it finds at start, calling a function per record.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
        chunk = events_pb2.AudioChunk.FromString(value)
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

    def duplicates(self) -> int:
        """Chunks seen more than once (same call, leg, chunk_seq)."""
        return sum(len(t.chunk_seqs) - len(set(t.chunk_seqs)) for legs in self.legs.values() for t in legs.values())

    def mismatches(self, frames_sent: dict[str, int]) -> dict[str, tuple[int, int]]:
        """Calls whose frame count in Kafka differs from what was sent: ``{call_id: (sent, in_kafka)}``."""
        return {
            cid: (sent, self.frames_of(cid)) for cid, sent in frames_sent.items() if self.frames_of(cid) != sent
        }


async def scan_topic(
    bootstrap: str, topic: str, on_value: Callable[[bytes], None], *, timeout_s: float = 120.0
) -> int:
    """Feed every record of ``topic`` (present when the scan starts) to ``on_value``; returns the count."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions:
            if topic in await consumer.topics():  # refreshes the metadata
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} not found")
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
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
