"""Kafka side of the bridge: one idempotent producer per process, one ordered pipeline per call.

Records are keyed by the call id (UTF-8) and carry protobuf bytes. A frame is acknowledged to
the client only once Kafka acknowledged (acks=all) the chunk that contains it: the per-call
pipeline hands chunks to the producer in order (at most ``max_inflight`` unacknowledged) and
reports them back, in order, as the broker acknowledges them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer

from lupita.privacy import encrypt_phone, phone_hash
from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
from lupita.v1 import audio_pb2, events_pb2

from .metrics import KAFKA_PUBLISH
from .settings import BridgeSettings
from .validation import ValidStart

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


def started_event(
    start: ValidStart, settings: BridgeSettings, *, received_at_us: int
) -> events_pb2.CallLifecycle:
    """CallLifecycle(started): the phone number only encrypted and as a keyed hash."""
    s = start.start
    return events_pb2.CallLifecycle(
        call_id=start.call_id,
        emitted_at_us=now_us(),
        started=events_pb2.CallStarted(
            started_at_us=s.started_at_us or received_at_us,
            direction=start.direction,
            sample_rate_hz=start.sample_rate_hz,
            codec=start.codec,
            recording_consent=s.recording_consent,
            consent_source=s.caller.consent_source,
            phone_hash=phone_hash(start.phone, settings.hmac_key_bytes),
            phone_encrypted=encrypt_phone(start.phone, settings.encryption_key_bytes),
            region=s.caller.region,
            family_plan_id=s.caller.family_plan_id,
            language=s.caller.language,
            bridge_instance=settings.instance_name,
        ),
    )


def ended_event(
    call_id: str,
    reason: str,
    *,
    ended_at_us: int,
    chunks: dict[int, int],
    frames: dict[int, int],
) -> events_pb2.CallLifecycle:
    return events_pb2.CallLifecycle(
        call_id=call_id,
        emitted_at_us=now_us(),
        ended=events_pb2.CallEnded(
            ended_at_us=ended_at_us,
            reason=reason,
            chunks_lupita=chunks.get(audio_pb2.LEG_LUPITA, 0),
            chunks_person=chunks.get(audio_pb2.LEG_PERSON, 0),
            frames_lupita=frames.get(audio_pb2.LEG_LUPITA, 0),
            frames_person=frames.get(audio_pb2.LEG_PERSON, 0),
        ),
    )


class KafkaPublisher:
    """The process's AIOKafkaProducer (idempotent, acks=all) and its topics."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.chunks_topic = settings.topic(AUDIO_CHUNKS)
        self.lifecycle_topic = settings.topic(CALL_LIFECYCLE)
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"lupita-bridge-{s.instance_name}",
            enable_idempotence=True,
            acks="all",
            linger_ms=s.kafka_linger_ms,
            request_timeout_ms=s.kafka_request_timeout_ms,
        )
        try:
            await self.producer.start()
        except BaseException:
            await self.producer.stop()
            self.producer = None
            raise

    async def stop(self) -> None:
        """Flush everything pending and close."""
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await producer.stop()

    async def probe(self) -> None:
        """Raise unless the cluster answers a metadata request."""
        assert self.producer is not None
        await self.producer.client.fetch_all_metadata()

    async def enqueue(self, topic: str, key: str, value: bytes) -> asyncio.Future:
        """Hand one record to the producer; the returned future resolves on the broker's ack."""
        assert self.producer is not None, "publisher not started"
        return await self.producer.send(topic, value=value, key=key.encode())

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        """Publish one record and wait for Kafka's acknowledgement."""
        t0 = time.perf_counter()
        fut = await self.enqueue(topic, key, value)
        # shielded: a cancelled caller must not cancel the producer's own delivery future
        await asyncio.shield(fut)
        KAFKA_PUBLISH.observe(time.perf_counter() - t0)


class CallPipeline:
    """Publishes one call's chunks in order and reports them, in order, once Kafka has them.

    ``submit`` is synchronous (never blocks the stream reader); what it can hold is bounded by
    the client's credits. ``on_acked`` receives batches of acknowledged chunks; ``on_failed``
    is told once if Kafka refused or timed out (the pipeline then stops).
    """

    def __init__(
        self,
        publisher: KafkaPublisher,
        call_id: str,
        *,
        max_inflight: int,
        on_acked: Callable[[list[events_pb2.AudioChunk]], Awaitable[None]],
        on_failed: Callable[[BaseException], None],
    ) -> None:
        self.publisher = publisher
        self.call_id = call_id
        self.on_acked = on_acked
        self.on_failed = on_failed
        self.error: BaseException | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._pump_done = False
        self._pump = asyncio.create_task(self._run_pump(), name=f"pump-{call_id}")
        self._acker = asyncio.create_task(self._run_acker(), name=f"acker-{call_id}")

    def submit(self, chunk: events_pb2.AudioChunk) -> None:
        self._queue.put_nowait(chunk)

    async def close(self) -> None:
        """Wait until every submitted chunk is acknowledged; raise if Kafka failed."""
        self._queue.put_nowait(None)
        await asyncio.gather(self._pump, self._acker, return_exceptions=True)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self._pump.cancel()
        self._acker.cancel()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self.on_failed(exc)

    async def _run_pump(self) -> None:
        try:
            while True:
                chunk = await self._queue.get()
                if chunk is None:
                    break
                await self._slots.acquire()
                if self.error is not None:
                    break
                t0 = time.perf_counter()
                fut = await self.publisher.enqueue(
                    self.publisher.chunks_topic, self.call_id, chunk.SerializeToString()
                )
                self._inflight.append((chunk, fut, t0))
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # producer closed, buffer timeout, ...
            self._fail(exc)
        finally:
            self._pump_done = True
            self._wake.set()

    async def _run_acker(self) -> None:
        while True:
            if not self._inflight:
                if self._pump_done:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            try:
                # shield: cancelling the acker must not cancel the producer's future
                await asyncio.shield(self._inflight[0][1])
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # read below, in order
            batch: list[events_pb2.AudioChunk] = []
            while self._inflight and self._inflight[0][1].done():
                chunk, fut, t0 = self._inflight.popleft()
                self._slots.release()
                if fut.cancelled() or fut.exception() is not None:
                    self._fail(fut.exception() if not fut.cancelled() else RuntimeError("publish cancelled"))
                    self._inflight.clear()
                    self._pump.cancel()
                    return
                KAFKA_PUBLISH.observe(time.perf_counter() - t0)
                batch.append(chunk)
            if batch:
                try:
                    await self.on_acked(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the client may be gone; publishing goes on
                    log.debug("ack delivery failed", exc_info=True, extra={"call_id": self.call_id})
