"""Kafka for the tests: produce records, read a topic back, a test module's own topics, and the
positive signal that a worker has handled records (its consumer group committed past them).

Reading uses kafka-python without a consumer group (assigned partitions, from the beginning);
producing uses aiokafka (idempotent, acks=all, the default partitioner, as the bridge does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from lupita.v1 import events_pb2
from waits import wait_for


@dataclass(frozen=True)
class Produced:
    topic: str
    partition: int
    offset: int


def produce(bootstrap: str, records: Iterable[tuple]) -> list[Produced]:
    """Publish ``(topic, key, value[, headers])`` in this order, wait for every ack, and return
    where each record landed."""
    from aiokafka import AIOKafkaProducer

    async def main() -> list[Produced]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            futures = []
            for topic, key, value, *rest in records:
                headers = list(rest[0] or []) if rest else None
                futures.append(await producer.send(topic, key=key, value=value, headers=headers))
            return [Produced(m.topic, m.partition, m.offset) for m in await asyncio.gather(*futures)]
        finally:
            await producer.stop()

    return asyncio.run(main())


class TopicReader:
    """Reads one topic from the beginning (all partitions), keeping every record it polled."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      consumer_timeout_ms=200, client_id="test-reader")
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.records: list[Any] = []  # kafka-python ConsumerRecords, in arrival order per partition

    def poll(self) -> None:
        for batch in self.consumer.poll(timeout_ms=300, max_records=5000).values():
            self.records.extend(batch)

    def read_to_end(self, timeout: float = 60.0) -> TopicReader:
        """Poll until every partition is read up to its end offset as of now."""
        end = self.consumer.end_offsets(self.partitions)
        wait_for(f"{self.topic} read to its end",
                 lambda: all(self.consumer.position(tp) >= end[tp] for tp in self.partitions),
                 timeout=timeout, interval=0, before=self.poll)
        return self

    def of(self, call_id: str) -> list[Any]:
        """The records keyed by ``call_id``, by (partition, offset)."""
        key = call_id.encode()
        return sorted((r for r in self.records if r.key == key), key=lambda r: (r.partition, r.offset))

    def decoded(self, call_id: str, message_type) -> list:
        return [message_type.FromString(r.value) for r in self.of(call_id)]

    def wait(self, what: str, done: Callable[[], Any], *, timeout: float = 60.0) -> Any:
        """Poll the topic until ``done()`` returns something truthy (and return it)."""
        return wait_for(what, done, timeout=timeout, interval=0, before=self.poll)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def records_of_call(bootstrap: str, topic: str, call_id: str) -> list:
    """Every record of ``call_id`` on ``topic`` up to the topic's current end."""
    with TopicReader(bootstrap, topic) as reader:
        return reader.read_to_end().of(call_id)


def events_of(bootstrap: str, topic: str, message_type, call_id: str) -> list:
    """The decoded records of ``call_id`` on ``topic`` up to its current end."""
    return [message_type.FromString(r.value) for r in records_of_call(bootstrap, topic, call_id)]


def segment_of(record: Any) -> events_pb2.SpeechSegment:
    return events_pb2.SpeechSegment.FromString(record.value)


def segments_of(reader: TopicReader, call_id: str) -> list[events_pb2.SpeechSegment]:
    return reader.decoded(call_id, events_pb2.SpeechSegment)


def transcripts_of(reader: TopicReader, call_id: str) -> list[events_pb2.TranscriptEvent]:
    return reader.decoded(call_id, events_pb2.TranscriptEvent)


# --- consumer groups: what a worker has handled -----------------------------------------------------


def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets: (topic, partition) -> next offset it will read."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-admin")
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="test-end-offsets")
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def wait_handled(bootstrap: str, group: str, produced: Iterable[Produced], *, timeout: float = 60.0,
                 alive: Callable[[], bool] | None = None) -> None:
    """Wait until ``group`` has committed past every record in ``produced``: a Faust worker commits
    a record's offset only once its agent is done with it, so everything those records caused in
    the worker has happened (the positive signal instead of a fixed sleep)."""
    need: dict[tuple[str, int], int] = {}
    for p in produced:
        need[(p.topic, p.partition)] = max(need.get((p.topic, p.partition), 0), p.offset + 1)

    def done() -> bool:
        have = committed_offsets(bootstrap, group)
        return all(have.get(tp, -1) >= off for tp, off in need.items())

    wait_for(f"consumer group {group} to commit past {len(need)} partition(s) of produced records", done,
             timeout=timeout, interval=0.25, alive=alive)


def wait_drained(bootstrap: str, group: str, topics: Iterable[str], *, timeout: float = 90.0,
                 alive: Callable[[], bool] | None = None, idle: Callable[[], bool] | None = None) -> None:
    """Wait until ``group`` has committed every partition of ``topics`` up to its end and ``idle()``
    holds (e.g. the worker's gauges of open calls and work in progress are 0), twice in a row: the
    worker has handled everything on its input topics, including what it published to them itself
    (a stage's output that is another stage's input), and has nothing left running."""
    topics = list(topics)
    streak = [0]

    def done() -> bool:
        ends = end_offsets(bootstrap, topics)
        have = committed_offsets(bootstrap, group)
        caught_up = all(have.get(tp, 0) >= off for tp, off in ends.items()) and (idle is None or idle())
        streak[0] = streak[0] + 1 if caught_up else 0
        return streak[0] >= 2

    wait_for(f"consumer group {group} to handle everything on {topics}", done, timeout=timeout,
             interval=0.5, alive=alive)


def own_topics(session_prefix: str, tag: str):
    """Worker settings on topics of a test module's own (a prefix inside the session's, created
    here), so the recorder tests' workers never see its records, nor its workers theirs; and the
    topic names it produces to (``.chunks``, ``.lifecycle``)."""
    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, ensure_topics
    from stream_processor.settings import PipelineSettings

    settings = PipelineSettings(topic_prefix=f"{session_prefix}{tag}-{uuid.uuid4().hex[:6]}.")
    ensure_topics(settings)
    topics = SimpleNamespace(chunks=settings.topic(AUDIO_CHUNKS), lifecycle=settings.topic(CALL_LIFECYCLE))
    return settings, topics


@contextlib.contextmanager
def own_topic_prefix(tag: str) -> Iterator[str]:
    """``LUPITA_TOPIC_PREFIX`` set to a prefix of the caller's own (topics created) while the
    context lasts, for the child processes it starts: a worker reading its topics from the
    beginning then never sees the calls the other test modules of the session produced."""
    from lupita.config import CommonSettings
    from lupita.topics import ensure_topics

    saved = os.environ.get("LUPITA_TOPIC_PREFIX")
    prefix = os.environ["LUPITA_TOPIC_PREFIX"] = f"{tag}-{uuid.uuid4().hex[:8]}."
    try:
        ensure_topics(CommonSettings())
        yield prefix
    finally:
        if saved is None:
            os.environ.pop("LUPITA_TOPIC_PREFIX", None)
        else:
            os.environ["LUPITA_TOPIC_PREFIX"] = saved


__all__ = [
    "Produced", "TopicReader", "committed_offsets", "end_offsets", "events_of", "own_topic_prefix", "own_topics",
    "produce",
    "records_of_call", "segment_of", "segments_of", "transcripts_of", "wait_drained", "wait_handled",
]
