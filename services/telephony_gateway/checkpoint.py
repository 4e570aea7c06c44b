"""Where each Chime call stands, in a compacted Kafka topic every gateway pod reads.

One record per write, keyed by the call (``chime-<transactionId>``), its value the call's latest
state as JSON: the streaming events' identities (transaction id, Chime call id, stream ARNs,
which leg is the caller), per leg the last fragment whose audio went to the bridge
(``doneThrough``) and, after a hand-off, the exact point inside the next fragment up to which it
went (``partial``: fragment number and the producer time of the last block sent), the part number
(``part``: bridge call ids are single-use, a resumed call is ``chime-<txn>-p<N>``), whether that
part's bridge call may have been opened (``opened``), and the person's number *encrypted* with
``LUPITA_PHONE_ENCRYPTION_KEY`` (the bridge's own AES-GCM helper), never in clear. A finished
call's last record is ``{"part": N, "done": true}``: a replayed STARTED of that call is then
ignored. The topic is ``compact,delete``: the latest record per call is kept, and the end
markers go after the retention (1 day, as long as the events topic keeps the events they answer).

Why Kafka and not a local file or Postgres: the call moves between pods (a rebalance, a pod that
died), so the next owner must read what the last one wrote; the gateway already needs Kafka for the
events and has no database; a compacted topic is Kafka's own table.

Every pod tails the whole topic into memory (:class:`CheckpointTable`); a pod that is given a
partition of the events topic first waits until it has read the checkpoint topic up to its end
(:meth:`CheckpointTable.caught_up`), so it sees the last owner's last acknowledged write before it
replays that partition's events. A write whose part is older than the table's (a pod that lost
the call without knowing it yet) is refused with :class:`Fenced`, and ignored by readers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

log = logging.getLogger("telephony_gateway.checkpoint")


class Fenced(Exception):
    """The call went on as a later part elsewhere: this process must stop writing for it."""


def newer(current: dict | None, state: dict) -> bool:
    """Whether ``state`` may replace ``current`` (a later or the same part)."""
    return current is None or int(state.get("part", 1)) >= int(current.get("part", 1))


class CheckpointTable:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.states: dict[str, dict] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._tps: list[TopicPartition] = []

    async def start(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                    client_id="lupita-gateway-checkpoints", auto_offset_reset="earliest")
        await consumer.start()
        try:
            parts = await producer.partitions_for(self.topic)
            self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(self._tps)
            await consumer.seek_to_beginning(*self._tps)
        except BaseException:
            await consumer.stop()
            raise
        self.consumer = consumer
        self._task = asyncio.create_task(self._tail())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def _tail(self) -> None:
        assert self.consumer is not None
        while True:
            batch = await self.consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    self._apply(r.key, r.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode(errors="replace")
        if value is None:  # a tombstone
            self.states.pop(name, None)
            return
        try:
            state = json.loads(value)
            int(state.get("part", 1))
        except (ValueError, TypeError, AttributeError):
            log.error("checkpoint record unreadable; ignored", extra={"stage": "chime", "call_id": name})
            return
        if newer(self.states.get(name), state):
            self.states[name] = state

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Return once every record written before this call has been read (raises TimeoutError)."""
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(self._tps)
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp in self._tps if await self.consumer.position(tp) < ends[tp]]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"checkpoints not read up to their end within {timeout:.0f} s")
            await asyncio.sleep(0.02)  # polling the tail's progress (no event to wait on in aiokafka)

    def get(self, key: str) -> dict | None:
        return self.states.get(key)

    async def save(self, key: str, state: dict) -> asyncio.Future:
        """Write ``state`` (the table has it at once); returns the broker's ack as a future.
        Raises :class:`Fenced` when the table already holds a later part of the call."""
        assert self.producer is not None
        if not newer(self.states.get(key), state):
            raise Fenced(key)
        self.states[key] = state
        return await self.producer.send(self.topic, json.dumps(state, separators=(",", ":")).encode(), key=key.encode())

