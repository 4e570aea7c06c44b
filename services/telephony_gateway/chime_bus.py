"""Chime events through Kafka, so that any number of gateway pods share the Voice Connector's calls.

EventBridge's POSTs reach whichever pod the load balancer picks; a call's two STARTED legs and
its ENDED may land on three pods. So the control API does not run calls: it checks each event
and publishes it to ``<prefix>telephony.chime.events`` keyed by its transaction id
(:meth:`ChimeBus.publish`), answering 202 only after the broker acknowledged every event of the
request (acks=all, idempotent producer) and 503 when it did not within
``gateway_chime_publish_timeout_seconds`` (EventBridge retries 5xx: nothing is lost, a retried
event may come twice, which the consumer takes as a replay).

The pods consume the topic as ONE consumer group (``gateway_chime_group_id``, sticky assignment):
the owner of a partition runs the calls keyed to it (:class:`~telephony_gateway.chime.ChimeCalls`),
so both legs meet on one pod and every call runs once. Offsets are committed by hand: a
partition's committed offset never passes the first event of a call still pending or live on it
(:meth:`ChimeCalls.commit_offsets`), so a new owner replays the STARTED events of every call it
takes over and finds the call's checkpoint (:mod:`~telephony_gateway.checkpoint`) to go on from.

Rebalance (:class:`_Listener`): partitions revoked → their calls pause between two frames, their
exact position is checkpointed (acknowledged) and the offsets committed; partitions assigned →
the checkpoint table is read to its end, then the calls of partitions that stayed here go on, and
those of partitions that left end their bridge call with reason ``handoff`` (the media bridge
takes a call id once: the next owner goes on as the next part, ``chime-<txn>-p<N+1>``, from the
checkpointed point, so nothing is lost or sent twice). A pod that dies keeps its partitions
until ``gateway_chime_session_timeout_ms``; the next owner then goes on from the last fragment
checkpointed (a fragment sent but not yet checkpointed is in both parts).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from cryptography.exceptions import InvalidTag

from lupita.privacy import InvalidPhoneNumber, decrypt_phone, encrypt_phone
from lupita.topics import (CHIME_CHECKPOINTS, CHIME_DEAD_LETTERS, CHIME_EVENTS, REASON_HEADER, SOURCE_HEADER,
                           ensure_topics)

from . import chime_events as ce
from . import metrics as m
from .checkpoint import CheckpointTable
from .errors import BadInput
from .settings import GatewaySettings

if TYPE_CHECKING:
    from .chime import ChimeCalls

log = logging.getLogger("telephony_gateway.chime_bus")

COMMIT_SECONDS = 1.0
SEGMENT_MS = str(3600 * 1000)  # the checkpoint topic's segments roll hourly, so compaction gets to them


class KafkaUnavailable(Exception):
    """The events could not be published (the broker did not acknowledge them in time)."""


class ChimeBus:
    def __init__(self, settings: GatewaySettings, calls: "ChimeCalls") -> None:
        self.settings = settings
        self.calls = calls
        self.events_topic = settings.topic(CHIME_EVENTS)
        self.checkpoints_topic = settings.topic(CHIME_CHECKPOINTS)
        self.dead_letters_topic = settings.topic(CHIME_DEAD_LETTERS)
        self.table = CheckpointTable(settings.kafka_bootstrap, self.checkpoints_topic)
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[TopicPartition] = set()
        self.state = "starting"
        self._producer_lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._idle = asyncio.Event()  # the consumer loop is between batches (no record half-handled)
        self._committed: dict[TopicPartition, int] = {}
        self._key: bytes | None = None
        # set between rebalances: aiokafka may hand out records of a new assignment while the
        # listener still reads the checkpoints, and no record is handled before that ends
        self._settled = asyncio.Event()
        self._topics = asyncio.Event()  # the topics exist (a publish before that would auto-create them wrong)

    # -- the phone number on the topic ------------------------------------------------------------

    def _enc_key(self) -> bytes:
        if self._key is None:
            self._key = self.settings.encryption_key_bytes  # ValueError when unset or too short
        return self._key

    def encrypt(self, phone: str) -> str:
        try:
            return base64.b64encode(encrypt_phone(phone, self._enc_key())).decode()
        except InvalidPhoneNumber as exc:
            raise BadInput("custom_parameters", f"the person's number in the streaming event is not usable: {exc}") from None

    def decrypt(self, blob: str) -> str:
        return decrypt_phone(base64.b64decode(blob), self._enc_key())

    # -- publishing (the control API) ---------------------------------------------------------------

    async def _producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self.producer is None:
                s = self.settings
                producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, client_id="lupita-gateway-chime",
                                            enable_idempotence=True, acks="all",
                                            request_timeout_ms=int(s.gateway_chime_publish_timeout_seconds * 1000))
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self.producer = producer
            return self.producer

    async def publish(self, events: list[ce.StreamingEvent]) -> None:
        """Publish checked events; returns once the broker acknowledged all of them, raises
        :class:`KafkaUnavailable` otherwise (the caller answers 503) and BadInput for an event
        whose person's number cannot be encrypted (refused before anything is sent)."""
        try:
            values = [(ce.record_key(ev), ce.to_record(ev, self.encrypt)) for ev in events]
        except ValueError as exc:  # no LUPITA_PHONE_ENCRYPTION_KEY: nothing can be published
            log.error("Chime events cannot be published", extra={"stage": "chime", "error": str(exc)[:200]})
            raise KafkaUnavailable("LUPITA_PHONE_ENCRYPTION_KEY is not set") from None
        deadline = time.monotonic() + self.settings.gateway_chime_publish_timeout_seconds
        try:
            await asyncio.wait_for(self._topics.wait(), deadline - time.monotonic())
            producer = await asyncio.wait_for(self._producer(), deadline - time.monotonic())
            acks = [await producer.send(self.events_topic, value, key=key) for key, value in values]
            await asyncio.wait_for(asyncio.gather(*acks), max(0.01, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - any failure to get the broker's ack is a 503
            m.CHIME_PUBLISHED.labels("failed").inc(len(values))
            log.warning("Chime events not published", extra={"stage": "chime", "events": len(values),
                                                             "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            raise KafkaUnavailable(type(exc).__name__) from None
        m.CHIME_PUBLISHED.labels("ok").inc(len(values))

    # -- consuming (every pod, one group) ------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def consuming(self) -> bool:
        return self.state == "consuming"

    async def _run(self) -> None:
        s = self.settings
        attempt = 0
        while not self._stopping:
            try:
                self._enc_key()
                await asyncio.to_thread(ensure_topics, s, (CHIME_EVENTS, CHIME_DEAD_LETTERS))
                await asyncio.to_thread(ensure_topics, s, (CHIME_CHECKPOINTS,), {"segment.ms": SEGMENT_MS})
                self._topics.set()
                await self.table.start(await self._producer())
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=s.kafka_bootstrap, group_id=s.gateway_chime_group_id,
                    client_id="lupita-gateway-chime", enable_auto_commit=False, auto_offset_reset="earliest",
                    session_timeout_ms=s.gateway_chime_session_timeout_ms,
                    heartbeat_interval_ms=max(1000, s.gateway_chime_session_timeout_ms // 4),
                    # a rebalance waits for the members' revoke callbacks, which pause and checkpoint
                    # calls (up to HANDOFF_SECONDS): more than the session timeout aiokafka defaults to
                    rebalance_timeout_ms=s.gateway_chime_session_timeout_ms + int(s.gateway_chime_handoff_seconds * 1000) + 10_000,
                    partition_assignment_strategy=(StickyPartitionAssignor,))
                consumer.subscribe([self.events_topic], listener=_Listener(self))
                await consumer.start()
                self.consumer = consumer
                self.state = "consuming"
                m.CHIME_CONSUMER_UP.set(1)
                log.info("Chime consumer started", extra={"stage": "chime", "topic": self.events_topic,
                                                          "group": s.gateway_chime_group_id})
                attempt = 0
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except ValueError as exc:  # no encryption key: a configuration error, not a broker fault
                self.state = "off: LUPITA_PHONE_ENCRYPTION_KEY not set"
                log.error("Chime path off", extra={"stage": "chime", "error": str(exc)[:200]})
                return
            except Exception as exc:  # noqa: BLE001 - Kafka unreachable: try again with backoff
                if self._stopping:
                    return
                attempt += 1
                self.state = "kafka unavailable"
                m.CHIME_CONSUMER_UP.set(0)
                log.warning("Chime consumer failed; retrying", extra={"stage": "chime", "attempt": attempt,
                                                                      "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                await self._close_consumer()
                await self.table.close()
                await asyncio.sleep(min(10.0, 0.5 * 2 ** min(attempt, 5)) * (0.5 + random.random() / 2))

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        last_commit = time.monotonic()
        while not self._stopping:
            self._idle.set()
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                await self._settled.wait()
            self._idle.clear()
            if self._stopping:
                break
            for tp, records in batch.items():
                for r in records:
                    if tp not in self.assigned:
                        break  # revoked meanwhile: the next owner reads it
                    try:
                        ev = ce.from_record(r.value, self.decrypt)
                    except (BadInput, ValueError, InvalidTag) as exc:
                        reason = exc.kind if isinstance(exc, BadInput) else "undecryptable"
                        if not await self._dead_letter(tp, r, reason):
                            break  # stopping or revoked before the broker took it: not consumed here
                        m.CHIME_CONSUMED.labels("bad").inc()
                        self.calls.consumed(tp, r.offset)
                        continue
                    self.calls.on_record(tp, r.offset, ev)
            if time.monotonic() - last_commit >= COMMIT_SECONDS:
                last_commit = time.monotonic()
                await self.commit(self.assigned)
        self._idle.set()

    async def _dead_letter(self, tp: TopicPartition, r, reason: str) -> bool:
        """Put a record the pod cannot use on the dead-letter topic as it was, with its reason and
        source in headers; True once the broker has it. A broker error is retried with backoff
        (the record is neither skipped nor acknowledged meanwhile); False when the pod stops or the
        partition is revoked first (the next owner reads the record again)."""
        headers = [(REASON_HEADER, reason.encode()), (SOURCE_HEADER, f"{r.topic}/{r.partition}/{r.offset}".encode())]
        attempt = 0
        while not self._stopping and tp in self.assigned:
            try:
                producer = await self._producer()
                await asyncio.wait_for(producer.send_and_wait(self.dead_letters_topic, r.value, key=r.key, headers=headers),
                                       self.settings.gateway_chime_publish_timeout_seconds)
            except Exception as exc:  # noqa: BLE001 - the broker did not take it: try again, lose nothing
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("Chime dead letter not delivered; retrying", extra={
                        "stage": "chime", "offset": r.offset, "attempt": attempt,
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)))
                continue
            m.CHIME_DEAD_LETTERS.labels(reason).inc()
            log.error("Chime event record dead-lettered", extra={"stage": "chime", "offset": r.offset,
                                                                 "partition": r.partition, "reason": reason})
            return True
        return False

    async def commit(self, tps) -> None:
        if self.consumer is None:
            return
        offsets = {tp: off for tp, off in self.calls.commit_offsets(tps).items() if self._committed.get(tp) != off}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)
        except Exception as exc:  # noqa: BLE001 - a commit lost in a rebalance is made again by the next owner's replay
            log.warning("offset commit failed", extra={"stage": "chime", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})

    async def _close_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        self.assigned = set()
        m.CHIME_PARTITIONS.set(0)
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception:  # noqa: BLE001 - closing a consumer whose broker is gone
                pass

    async def stop(self) -> None:
        """Graceful: pause this pod's calls, checkpoint them, commit, leave the group (the other
        pods take the partitions at once), then end the calls here with ``handoff``."""
        self._stopping = True
        if self.consumer is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), 5)
            except TimeoutError:
                pass
            await self.halt()  # between two batches: no record half-handled
            owned = set(self.assigned)
            await self.calls.pause_partitions(owned)
            await self.commit(owned)
            await self._close_consumer()
            await self.calls.settle(set(), wait=True)
        await self.close()

    async def halt(self) -> None:
        """Stop reading records (nothing is committed)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Immediate (tests, a crash): the consumer and producers go, nothing is committed."""
        await self.halt()
        m.CHIME_CONSUMER_UP.set(0)
        await self._close_consumer()
        await self.table.close()
        if self.producer is not None:
            producer, self.producer = self.producer, None
            try:
                await producer.stop()
            except Exception:  # noqa: BLE001
                pass
        self.state = "stopped"


class _Listener(ConsumerRebalanceListener):
    """aiokafka awaits these inside the rebalance. It heartbeats during the revoke callback but not
    during the assign callback, so the assign callback only records the assignment: reading the
    checkpoints to their end and settling the paused calls run in a task of their own, and no
    record is handled before it finished (``ChimeBus._settled``)."""

    def __init__(self, bus: ChimeBus) -> None:
        self.bus = bus
        self.settling: asyncio.Task | None = None

    async def on_partitions_revoked(self, revoked) -> None:
        bus = self.bus
        bus._settled.clear()
        if self.settling is not None:  # the last assignment still settling: let it finish first
            await asyncio.gather(self.settling, return_exceptions=True)
        revoked = set(revoked)
        if not revoked:
            return
        await bus.calls.pause_partitions(revoked)
        await bus.commit(revoked)
        bus.assigned -= revoked
        m.CHIME_PARTITIONS.set(len(bus.assigned))

    async def on_partitions_assigned(self, assigned) -> None:
        bus = self.bus
        bus.assigned = set(assigned)
        bus._committed = {tp: off for tp, off in bus._committed.items() if tp in bus.assigned}
        m.CHIME_PARTITIONS.set(len(bus.assigned))
        log.info("Chime partitions assigned", extra={"stage": "chime", "partitions": sorted(tp.partition for tp in assigned)})
        self.settling = asyncio.create_task(self._settle(set(assigned)))

    async def _settle(self, assigned: set) -> None:
        bus = self.bus
        try:
            await bus.table.caught_up()
        except Exception as exc:  # noqa: BLE001 - a call found now may resume earlier than checkpointed
            log.error("checkpoints not read to their end", extra={"stage": "chime",
                                                                  "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        try:
            await bus.calls.settle(assigned)
        finally:
            bus._settled.set()
