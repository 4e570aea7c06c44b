"""A small explicit client, frame makers and Kafka read-back for the media-bridge tests.

The bridge under test is the real one (``media_bridge.server.Bridge`` on grpc.aio, in this
process, or ``lupita bridge`` as a child process) publishing to the real Kafka of the local
stack; records are read back with aiokafka (no consumer group, bounded polls).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waits import await_for

from lupita.audio import BYTES_PER_SAMPLE
from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
from lupita.v1 import audio_pb2, events_pb2, media_bridge_pb2 as mb

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
PCM16, MULAW = audio_pb2.CODEC_PCM16, audio_pb2.CODEC_MULAW
# A made-up Oaxaca number, written the way an adapter might send it.
PHONE = "+52 (951) 555-0142"
PHONE_FORMS = (b"+529515550142", b"529515550142", b"9515550142", PHONE.encode())
T0_US = 1_764_000_000_000_000
RPC_TIMEOUT_S = 30.0
WAIT_S = 15.0


def bridge_settings(**overrides):
    """Test settings: loopback, free port, no metrics server, small credit window.

    ``initial_credits=10`` is the least the settings allow for 100 ms chunks (both legs can
    fill one chunk), so a client that ignores credits is caught quickly; ``max_linger_ms`` is
    long so no partial chunk is flushed (and no credit returned) while a test is deciding
    what to send next.
    """
    from media_bridge.settings import BridgeSettings

    values = dict(
        grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, initial_credits=10,
        max_linger_ms=5000, close_grace_ms=1000, drain_seconds=5, instance_name="bridge-under-test",
    )
    values.update(overrides)
    return BridgeSettings(**values)


@dataclass
class RunningBridge:
    bridge: object
    settings: object
    channel: grpc.aio.Channel
    token: str

    def client(self, token: str | None = "default", **kw) -> "CallClient":
        return CallClient(self.channel, self.token if token == "default" else token, **kw)


async def start_bridge(**overrides) -> RunningBridge:
    from media_bridge.server import Bridge

    settings = bridge_settings(**overrides)
    bridge = Bridge(settings)
    port = await bridge.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return RunningBridge(bridge, settings, channel, settings.tokens()[0])


async def stop_bridge(running: RunningBridge) -> None:
    await running.channel.close()
    await running.bridge.close()


# ---- audio frames ------------------------------------------------------------------------


def make_frames(
    leg: int, n: int, *, rate: int = 8000, codec: int = PCM16, frame_ms: int = 20,
    first_seq: int = 1, t0_us: int = T0_US, seed: int = 0,
) -> list[mb.AudioFrame]:
    """``n`` contiguous frames of random bytes (random, so a reordering or a loss shows)."""
    rng = random.Random(f"{seed}-{leg}")
    size = rate * frame_ms // 1000 * BYTES_PER_SAMPLE[codec]
    return [
        mb.AudioFrame(
            leg=leg, seq=first_seq + i, capture_ts_us=t0_us + i * frame_ms * 1000, payload=rng.randbytes(size)
        )
        for i in range(n)
    ]


def interleave(*legs: list[mb.AudioFrame]) -> list[mb.AudioFrame]:
    out = []
    for i in range(max(map(len, legs))):
        out += [leg[i] for leg in legs if i < len(leg)]
    return out


def msg(x) -> mb.ClientMessage | bytes:
    """The ClientMessage carrying ``x``; ``bytes`` are sent on the wire exactly as they are
    (what a raw-gRPC client can send: not necessarily a valid protobuf)."""
    if isinstance(x, bytes):
        return x
    if isinstance(x, mb.AudioFrame):
        return mb.ClientMessage(frame=x)
    if isinstance(x, mb.CallStart):
        return mb.ClientMessage(start=x)
    if isinstance(x, mb.CallEnd):
        return mb.ClientMessage(end=x)
    raise TypeError(type(x))


def call_start(call_id: str, *, rate: int = 8000, codec: int = PCM16, consent: bool = True, **kw) -> mb.CallStart:
    fields = dict(
        call_id=call_id, direction=audio_pb2.DIRECTION_OUTBOUND, sample_rate_hz=rate, codec=codec,
        recording_consent=consent, started_at_us=T0_US,
        caller=mb.CallerMetadata(
            phone_number=PHONE, region="oaxaca", family_plan_id="plan-7", language="es-MX",
            consent_source="ivr_prompt_v2",
        ),
    )
    fields.update(kw)
    return mb.CallStart(**fields)


# ---- the client ----------------------------------------------------------------------------

STREAM_CALL = "/lupita.v1.MediaBridge/StreamCall"


def _to_wire(m: mb.ClientMessage | bytes) -> bytes:
    return m if isinstance(m, bytes) else m.SerializeToString()


class CallClient:
    """One StreamCall stream, driven step by step by a test; records what the server sends.

    :meth:`write` takes a message part (CallStart, AudioFrame, CallEnd) or raw ``bytes``."""

    def __init__(
        self, channel: grpc.aio.Channel, token: str | None, *, timeout_s: float = RPC_TIMEOUT_S,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        if metadata is None and token is not None:
            metadata = (("authorization", f"Bearer {token}"),)
        # the generated stub's method, with a serializer that also lets raw bytes through
        self.rpc = channel.stream_stream(
            STREAM_CALL, request_serializer=_to_wire, response_deserializer=mb.ServerMessage.FromString
        )(metadata=metadata, timeout=timeout_s)
        self.received: list[mb.ServerMessage] = []
        self.credits = 0
        self.acked: dict[int, int] = {}
        self.accepted: mb.CallAccepted | None = None
        self.closed: mb.CallClosed | None = None
        self.errors: list[mb.Error] = []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                m = await self.rpc.read()
                if m is grpc.aio.EOF:
                    break
                self.received.append(m)
                kind = m.WhichOneof("msg")
                if kind == "accepted":
                    self.accepted = m.accepted
                    self.credits += m.accepted.credits
                elif kind == "flow":
                    self.credits += m.flow.credits
                elif kind == "ack":
                    assert m.ack.seq > self.acked.get(m.ack.leg, 0), "acks must be cumulative and increasing"
                    self.acked[m.ack.leg] = m.ack.seq
                elif kind == "error":
                    self.errors.append(m.error)
                elif kind == "closed":
                    self.closed = m.closed
                self._changed.set()
        except grpc.aio.AioRpcError:
            pass
        except asyncio.CancelledError:
            if not self.rpc.cancelled():  # this task was cancelled, not the RPC
                raise
        finally:
            self.code = await self.rpc.code()
            self.details = await self.rpc.details() or ""
            self._changed.set()

    @property
    def done(self) -> bool:
        return self._reader.done()

    async def wait_until(self, pred: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        async def loop():
            while not pred():
                if self.done:
                    raise AssertionError(f"stream ended ({self.code}: {self.details}) while waiting for {what}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None

    async def write(self, x) -> bool:
        """Write one message; False when the server had already ended the stream (a refusal
        can race with the client's writes; the status then says why)."""
        try:
            await self.rpc.write(msg(x))
            return True
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            if not self.rpc.done():
                raise
            return False

    async def start(self, start: mb.CallStart) -> mb.CallAccepted:
        await self.write(start)
        await self.wait_until(lambda: self.accepted is not None, "CallAccepted")
        return self.accepted

    async def send(self, frames: Iterable[mb.AudioFrame]) -> None:
        """Send frames, waiting for FlowControl credits like a well-behaved adapter."""
        for f in frames:
            await self.wait_until(lambda: self.credits > 0, "credits")
            self.credits -= 1
            await self.write(f)

    async def wait_acked(self, last: dict[int, int]) -> None:
        await self.wait_until(
            lambda: all(self.acked.get(leg, 0) >= seq for leg, seq in last.items()), f"acks up to {last}"
        )

    async def end(self, reason: str = "hangup") -> grpc.StatusCode:
        await self.write(mb.CallEnd(reason=reason, ended_at_us=T0_US + 60_000_000))
        await self.rpc.done_writing()
        return await self.status()

    async def status(self, timeout_s: float = WAIT_S) -> grpc.StatusCode:
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        except TimeoutError:
            raise AssertionError(f"the stream did not end within {timeout_s}s") from None
        return self.code

    def cancel(self) -> None:
        self.rpc.cancel()


async def run_good_call(client: CallClient, call_id: str, frames: list[mb.AudioFrame], **start_kw) -> CallClient:
    """A complete, valid call: start, all frames (respecting credits), end; asserts OK."""
    await client.start(call_start(call_id, **start_kw))
    await client.send(frames)
    code = await client.end()
    assert code == grpc.StatusCode.OK, client.details
    return client


def last_seqs(frames: Iterable[mb.AudioFrame]) -> dict[int, int]:
    out: dict[int, int] = {}
    for f in frames:
        out[f.leg] = max(out.get(f.leg, 0), f.seq)
    return out


async def wait_for_condition(pred: Callable[[], bool], what: str, timeout_s: float = WAIT_S, every_s: float = 0.05) -> None:
    """Poll ``pred`` (bounded): for state that changes in the background (the kit's
    :func:`waits.await_for`, in this module's argument order)."""
    await await_for(what, pred, timeout=timeout_s, interval=every_s)


# ---- reading Kafka back --------------------------------------------------------------------


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


@dataclass
class CallRecords:
    lifecycle: list[events_pb2.CallLifecycle] = field(default_factory=list)
    chunks: list[events_pb2.AudioChunk] = field(default_factory=list)
    chunk_partitions: set[int] = field(default_factory=set)

    def ended(self) -> events_pb2.CallEnded:
        ends = [e.ended for e in self.lifecycle if e.WhichOneof("event") == "ended"]
        assert len(ends) == 1, f"expected one ended event, got {len(ends)}"
        return ends[0]

    def started(self) -> events_pb2.CallStarted:
        starts = [e.started for e in self.lifecycle if e.WhichOneof("event") == "started"]
        assert len(starts) == 1, f"expected one started event, got {len(starts)}"
        return starts[0]

    def leg_chunks(self, leg: int) -> list[events_pb2.AudioChunk]:
        return [c for c in self.chunks if c.leg == leg]

    def leg_payload(self, leg: int) -> bytes:
        return b"".join(c.payload for c in self.leg_chunks(leg))


async def read_topic(topic: str, *, stop: Callable[[list[Record]], bool] | None = None, timeout_s: float = WAIT_S) -> list[Record]:
    """Every record of ``topic`` from the beginning.

    Without ``stop``: up to the end offsets seen at the start. With ``stop``: keeps polling
    until ``stop(records)`` holds (AssertionError after ``timeout_s``).
    """
    from lupita.config import CommonSettings

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=CommonSettings().kafka_bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", request_timeout_ms=10000,
    )
    await consumer.start()
    try:
        # without a group, a subscription is assigned every partition of the topic
        await await_for(f"the partitions of {topic}", consumer.assignment, timeout=5)
        tps = sorted(consumer.assignment())
        assert tps, f"topic {topic} has no partitions"
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Record] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if stop is None and all(await _positions_reached(consumer, end)):
                return records
            if stop is not None and stop(records):
                return records
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"reading {topic}: condition not met within {timeout_s}s ({len(records)} records)")
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                records += [Record(tp.topic, tp.partition, m.offset, m.key, m.value) for m in msgs]
    finally:
        await consumer.stop()


async def _positions_reached(consumer: AIOKafkaConsumer, end: dict) -> list[bool]:
    return [await consumer.position(tp) >= off for tp, off in end.items()]


def _is_ended(call_id: str):
    key = call_id.encode()

    def stop(records: list[Record]) -> bool:
        for r in records:
            if r.key == key and events_pb2.CallLifecycle.FromString(r.value).WhichOneof("event") == "ended":
                return True
        return False

    return stop


async def read_call(settings, call_id: str) -> CallRecords:
    """The call's lifecycle events and chunks, once its ended event is in Kafka.

    The bridge publishes ended only after every chunk of the call was acknowledged (acks=all),
    so reading audio.chunks to its end offsets afterwards sees all of them.
    """
    key = call_id.encode()
    life = await read_topic(settings.topic(CALL_LIFECYCLE), stop=_is_ended(call_id))
    chunks = await read_topic(settings.topic(AUDIO_CHUNKS))
    out = CallRecords()
    out.lifecycle = [events_pb2.CallLifecycle.FromString(r.value) for r in life if r.key == key]
    mine = sorted((r for r in chunks if r.key == key), key=lambda r: (r.partition, r.offset))
    out.chunks = [events_pb2.AudioChunk.FromString(r.value) for r in mine]
    out.chunk_partitions = {r.partition for r in mine}
    return out


def assert_leg_exact(records: CallRecords, leg: int, frames: list[mb.AudioFrame]) -> None:
    """The leg's chunks, in Kafka order, are chunk_seq 0..n-1 and carry exactly ``frames``."""
    sent = [f for f in frames if f.leg == leg]
    chunks = records.leg_chunks(leg)
    assert [c.chunk_seq for c in chunks] == list(range(len(chunks)))
    assert records.leg_payload(leg) == b"".join(f.payload for f in sent)
    assert sum(c.frame_count for c in chunks) == len(sent)
    if sent:
        assert chunks[0].first_frame_seq == sent[0].seq
        assert chunks[0].start_ts_us == sent[0].capture_ts_us
        assert chunks[-1].last_frame_seq == sent[-1].seq
    for a, b in zip(chunks, chunks[1:]):
        assert b.first_frame_seq == a.last_frame_seq + 1  # contiguous, in order


# ---- health --------------------------------------------------------------------------------


async def health_status(channel: grpc.aio.Channel, service: str = "lupita.v1.MediaBridge") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
