"""Simulated calls for the recorder tests, built with the bridge's own code.

The Kafka records are made by the media bridge's functions (``check_start`` +
``started_event``, ``LegChunker``, ``ended_event``), so the recorder is tested against exactly
what the bridge publishes. The expected stereo signal is computed independently from the
frames (sample offset = capture time since the call start), not with the recorder's muxer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lupita.audio import mulaw_decode, mulaw_encode
from lupita.v1 import audio_pb2, events_pb2, media_bridge_pb2
from media_bridge.chunker import LegChunker
from media_bridge.publisher import ended_event, started_event
from media_bridge.settings import BridgeSettings
from media_bridge.validation import check_start

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON


@dataclass
class SimCall:
    call_id: str
    phone: str
    consent: bool
    rate: int
    codec: int
    started_at_us: int
    started: events_pb2.CallLifecycle
    chunks: list[events_pb2.AudioChunk]
    ended: events_pb2.CallLifecycle
    expected: np.ndarray  # (frames, 2) int16: left = Lupita, right = person
    frames_sent: dict[int, int] = field(default_factory=dict)

    def chunks_of(self, leg: int) -> list[events_pb2.AudioChunk]:
        return [c for c in self.chunks if c.leg == leg]


def simulate_call(
    call_id: str,
    *,
    phone: str,
    consent: bool = True,
    rate: int = 8000,
    codec: int = audio_pb2.CODEC_PCM16,
    lupita_ms: int = 1000,
    person_offset_ms: int = 200,
    person_ms: int = 800,
    person_gap_ms: tuple[int, int] | None = (300, 400),
    frame_ms: int = 20,
    chunk_ms: int = 100,
    seed: int = 0,
) -> SimCall:
    """One call: Lupita talks from t=0, the person from ``person_offset_ms`` with a stretch of
    lost frames (``person_gap_ms``, relative to the person's first frame)."""
    settings = BridgeSettings()
    rng = np.random.default_rng(seed)
    t0 = (time.time_ns() // 1000 // 1000) * 1000  # whole milliseconds
    start = media_bridge_pb2.CallStart(
        call_id=call_id,
        direction=audio_pb2.DIRECTION_OUTBOUND,
        sample_rate_hz=rate,
        codec=codec,
        recording_consent=consent,
        started_at_us=t0,
        caller=media_bridge_pb2.CallerMetadata(
            phone_number=phone, region="oaxaca", family_plan_id="plan-test", language="es-MX",
            consent_source="ivr_prompt_v2",
        ),
    )
    started = started_event(check_start(start), settings, received_at_us=t0)
    frame_samples = rate * frame_ms // 1000
    frame_us = frame_ms * 1000
    legs = {
        LUPITA: (0, lupita_ms, None),
        PERSON: (person_offset_ms, person_ms, person_gap_ms),
    }
    total = max((off + ms) * rate // 1000 for off, ms, _ in legs.values())
    expected = np.zeros((total, 2), dtype=np.int16)
    chunks: list[events_pb2.AudioChunk] = []
    counts: dict[int, int] = {}
    frames: dict[int, int] = {}
    for channel, (leg, (offset_ms, ms, gap)) in enumerate(legs.items()):
        chunker = LegChunker(call_id=call_id, leg=leg, sample_rate_hz=rate, codec=codec, chunk_ms=chunk_ms)
        for k in range(ms // frame_ms):
            rel_ms = k * frame_ms
            if gap is not None and gap[0] <= rel_ms < gap[1]:
                continue  # lost frames: sequence numbers and time jump
            pcm = rng.integers(-20000, 20000, frame_samples, dtype=np.int16)
            if codec == audio_pb2.CODEC_MULAW:
                payload = mulaw_encode(pcm)
                pcm = mulaw_decode(payload)
            else:
                payload = pcm.astype("<i2").tobytes()
            ts = t0 + offset_ms * 1000 + k * frame_us
            pos = (offset_ms + rel_ms) * rate // 1000
            expected[pos : pos + frame_samples, channel] = pcm
            chunks.extend(chunker.add(k, ts, payload))
        tail = chunker.flush()
        if tail is not None:
            chunks.append(tail)
        counts[leg] = chunker.next_chunk_seq
        frames[leg] = chunker.frames_total
    ended = ended_event(
        call_id, "hangup", ended_at_us=t0 + total * 1_000_000 // rate, chunks=counts, frames=frames
    )
    return SimCall(call_id, phone, consent, rate, codec, t0, started, chunks, ended, expected, frames)


def records_for(call: SimCall, topics: Any, *, chunks: Iterable[events_pb2.AudioChunk] | None = None,
                started: bool = True, ended: bool = True) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) in the bridge's order: started, chunks, ended."""
    key = call.call_id.encode()
    out = []
    if started:
        out.append((topics.lifecycle, key, call.started.SerializeToString()))
    for c in call.chunks if chunks is None else chunks:
        out.append((topics.chunks, key, c.SerializeToString()))
    if ended:
        out.append((topics.lifecycle, key, call.ended.SerializeToString()))
    return out


def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    """Publish with aiokafka (idempotent, acks=all, default partitioner) and wait for acks."""
    from aiokafka import AIOKafkaProducer

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            futures = [await producer.send(t, key=k, value=v) for t, k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(main())


def wait_for(what: str, fn: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
