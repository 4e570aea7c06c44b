"""The ``transcriber`` stage: speech.segments → transcripts (partials + finals, word timings in call time).

Plain parts (no Kafka, unit-tested): :func:`parse_segment` validates a record,
:func:`order_key` orders the records of one (call, leg) so a redelivery is recognised,
:func:`transcript_event` turns a :class:`~.asr.TranscriptResult` into the ``TranscriptEvent``
(times shifted from segment time to call time), :func:`stale_partial` says when a partial is
not worth decoding any more.

The Faust wrapper (:class:`TranscriberAgent`):

- consumes ``speech.segments`` with manual acks: each record is acknowledged only after its
  transcript was delivered to Kafka (or it was skipped on purpose), so a crash never loses one;
  out-of-order acks are fine (Faust commits the highest contiguous offset);
- keeps one queue per (call, leg), worked in order by one task; decoding runs in a thread pool
  (``transcriber_threads``), never on the event loop, different legs in parallel; at most
  ``transcriber_max_in_flight`` records are taken and not yet done (backpressure);
- a PARTIAL is decoded beside its leg's queue, so the final behind it never waits for a
  hypothesis: the partial is published only if it is ready before the final of its leg (a
  per-leg publish lock decides), so on ``transcripts`` a leg's partials always precede its final;
  at most one partial per leg decodes at a time, and a partial is skipped when a newer record of
  the leg already waits (``transcriber_skip_stale_partials``: under load partials go first);
- deduplicates redelivered segments (a vad replay after a restart, or its own redelivery):
  per (call, leg) the highest :func:`order_key` done is kept in the changelog-backed table
  ``transcriber_progress``, written only after the transcript was delivered; a record at or
  below it is skipped. The entry is kept ``transcriber_state_retention_seconds`` after the leg's
  END_OF_LEG and removed later while records of its partition are processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from lupita.audio import SUPPORTED_RATES
from lupita.topics import SPEECH_SEGMENTS, TRANSCRIPTS
from lupita.v1 import events_pb2

from stream_processor import callstate as cs
from stream_processor.models.asr.base import AsrError, AudioInputError, Transcriber, TranscriptResult
from stream_processor.stages.recorder.wav import LEG_NAMES

log = logging.getLogger(__name__)

TRANSCRIBER_DEAD_LETTERS = "stream-processor.transcriber-dead-letters"
PROGRESS_TABLE = "transcriber_progress"

KIND_FINAL = events_pb2.SEGMENT_KIND_FINAL
KIND_PARTIAL = events_pb2.SEGMENT_KIND_PARTIAL
KIND_END = events_pb2.SEGMENT_KIND_END_OF_LEG
KIND_NAMES = {KIND_FINAL: "final", KIND_PARTIAL: "partial", KIND_END: "end_of_leg"}
_RANK = {KIND_PARTIAL: 0, KIND_FINAL: 1, KIND_END: 2}
# A segment is at most 30 s (settings): anything longer is not a vad segment.
MAX_SEGMENT_SECONDS = 31.0

SEGMENTS = Counter(
    "lupita_transcriber_segments_total",
    "speech.segments records handled, by kind and outcome (transcribed, empty, duplicate, stale, error)",
    ["kind", "outcome"],
)
BAD_RECORDS = Counter("lupita_transcriber_bad_records_total", "Records that are not valid SpeechSegments", ["reason"])
DECODE_SECONDS = Histogram(
    "lupita_transcriber_decode_seconds", "Time to transcribe one segment (thread pool)", ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
LAG_SECONDS = Histogram(
    "lupita_transcriber_lag_seconds",
    "From the vad publishing a segment to its transcript being published (queueing + decoding)", ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
IN_FLIGHT = Gauge("lupita_transcriber_in_flight", "Segments taken from Kafka and not yet done")


# ================================================================================================
# pure parts
# ================================================================================================


def parse_segment(key: bytes | None, value: bytes | None) -> events_pb2.SpeechSegment:
    """Decode and validate a ``speech.segments`` record; raises :class:`.callstate.BadRecord`."""
    seg = events_pb2.SpeechSegment()
    try:
        seg.ParseFromString(value or b"")
    except Exception as exc:
        raise cs.BadRecord(f"speech.segments value is not a SpeechSegment protobuf: {exc}",
                           reason="undecodable") from exc
    if not cs.is_valid_call_id(seg.call_id):
        raise cs.BadRecord(f"call_id is not a valid call id (length {len(seg.call_id)})", reason="invalid_call_id")
    if key != seg.call_id.encode():
        raise cs.BadRecord("record key differs from the call_id in the value", reason="key_mismatch")
    if seg.leg not in LEG_NAMES:
        raise cs.BadRecord(f"segment {seg.seq}: leg {seg.leg} is not LEG_LUPITA or LEG_PERSON")
    if seg.kind not in _RANK:
        raise cs.BadRecord(f"segment {seg.seq}: kind {seg.kind} is not FINAL, PARTIAL or END_OF_LEG")
    if seg.kind == KIND_END:
        return seg
    if seg.sample_rate_hz not in SUPPORTED_RATES:
        raise cs.BadRecord(f"segment {seg.seq}: sample rate {seg.sample_rate_hz} not in {SUPPORTED_RATES}")
    if not seg.pcm16 or len(seg.pcm16) % 2:
        raise cs.BadRecord(f"segment {seg.seq}: pcm16 of {len(seg.pcm16)} bytes is not a positive whole "
                           "number of 2-byte samples")
    if len(seg.pcm16) > 2 * seg.sample_rate_hz * MAX_SEGMENT_SECONDS:
        raise cs.BadRecord(f"segment {seg.seq}: {len(seg.pcm16) / 2 / seg.sample_rate_hz:.1f} s of audio, "
                           f"more than {MAX_SEGMENT_SECONDS:.0f} s")
    if seg.end_us <= seg.start_us or seg.start_us < 0:
        raise cs.BadRecord(f"segment {seg.seq}: start_us {seg.start_us} / end_us {seg.end_us} are not a "
                           "non-negative, increasing pair")
    return seg


def stream_key(seg: events_pb2.SpeechSegment) -> str:
    return f"{seg.call_id}:{LEG_NAMES[seg.leg]}"


def order_key(seg: events_pb2.SpeechSegment) -> tuple[int, int, int]:
    """Total order of one leg's records as the vad emits them: by seq, then partial snapshots
    (by revision) before the final, and END_OF_LEG (seq = number of segments) last."""
    return (int(seg.seq), _RANK[seg.kind], int(seg.revision))


def stale_partial(seg: events_pb2.SpeechSegment, waiting: list[events_pb2.SpeechSegment]) -> bool:
    """A partial is stale when a newer record of the same leg is already waiting behind it."""
    return seg.kind == KIND_PARTIAL and any(order_key(w) > order_key(seg) for w in waiting)


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def transcript_event(seg: events_pb2.SpeechSegment, result: TranscriptResult | None, *,
                     emitted_at_us: int, error: str | None = None) -> events_pb2.TranscriptEvent:
    """The TranscriptEvent of a segment; words move from segment time to call time.

    ``result`` None with ``error``: the segment could not be transcribed (the final is still
    published, empty, so downstream never waits for it; ``guard_actions`` names the error)."""
    ev = events_pb2.TranscriptEvent(
        call_id=seg.call_id, leg=seg.leg, seq=seg.seq, is_partial=seg.kind == KIND_PARTIAL,
        revision=seg.revision, emitted_at_us=emitted_at_us, segment_start_us=seg.start_us,
        segment_end_us=seg.end_us, call_started_at_us=seg.call_started_at_us,
    )
    if result is None:
        ev.guard_actions.append(f"error:{error or 'unknown'}")
        return ev
    moved = result.shifted(seg.start_us / 1_000_000)
    ev.text = moved.text
    ev.language = moved.language
    ev.backend = moved.backend
    ev.model = moved.model
    ev.guard_actions.extend(moved.guard_actions)
    if moved.fallback_from:
        ev.fallback_from = moved.fallback_from
    if moved.confidence is not None:
        ev.confidence = float(moved.confidence)
    for w in moved.words:
        tw = ev.words.add(word=w.text, start_us=_us(w.start), end_us=_us(w.end))
        if w.probability is not None:
            tw.probability = float(w.probability)
    return ev


def leg_complete_event(seg: events_pb2.SpeechSegment, *, emitted_at_us: int) -> events_pb2.TranscriptEvent:
    return events_pb2.TranscriptEvent(
        call_id=seg.call_id, leg=seg.leg, seq=seg.seq, leg_complete=True, emitted_at_us=emitted_at_us,
        segment_start_us=seg.start_us, segment_end_us=seg.end_us, call_started_at_us=seg.call_started_at_us,
    )


def segment_audio(seg: events_pb2.SpeechSegment) -> np.ndarray:
    return np.frombuffer(seg.pcm16, dtype="<i2").astype(np.int16)


# ================================================================================================
# Faust wrapper
# ================================================================================================


@dataclass
class _Item:
    event: Any
    seg: events_pb2.SpeechSegment
    generation: int


@dataclass
class _Partial:
    item: _Item
    superseded: bool = False  # the final of the leg was published first: drop this hypothesis


class TranscriberAgent:
    """The transcriber stage wired into a Faust app (shared with the other stages of the worker)."""

    def __init__(self, settings: Any, *, app: Any, transcriber: Transcriber | None = None,
                 probes: Any = None) -> None:
        from stream_processor.models.asr.factory import build_transcriber

        self.settings = settings
        self.app = app
        self.probes = probes
        self.asr = transcriber or build_transcriber(settings)
        self.executor = ThreadPoolExecutor(settings.transcriber_threads, thread_name_prefix="transcriber")
        self._generation = 0
        self._queues: dict[str, deque[_Item]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._partials: dict[str, _Partial] = {}  # leg -> its partial being decoded
        self._locks: dict[str, asyncio.Lock] = {}  # leg -> publish lock
        self._slots: asyncio.Semaphore | None = None
        self._purged_at: dict[int, float] = {}

        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = app.topic(settings.topic(SPEECH_SEGMENTS), **raw)
        self.transcripts = app.topic(settings.topic(TRANSCRIPTS), **raw)
        self.dead_letters = app.topic(settings.topic(TRANSCRIBER_DEAD_LETTERS), **raw)
        # "call_id:leg" -> {"key": order_key done, "partition": p, "done_at": unix s once ended}
        self.progress = app.Table(PROGRESS_TABLE, key_type=str, partitions=settings.topic_partitions)
        app.agent(self.source, name="transcriber")(self._agent)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.on_before_shutdown.connect(self._on_before_shutdown)

    # -- intake ----------------------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> Any:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.transcriber_max_in_flight)
        async for event in stream.noack().events():
            msg = event.message
            try:
                seg = parse_segment(event.key, event.value)
            except cs.BadRecord as exc:
                BAD_RECORDS.labels(exc.reason).inc()
                log.warning("bad record skipped", extra={
                    "stage": "transcriber", "topic": msg.topic, "partition": msg.partition,
                    "offset": msg.offset, "reason": exc.reason, "error": str(exc)})
                await self._dead_letter(msg, event.key, event.value, exc.reason)
                event.ack()
                continue
            await self._slots.acquire()
            IN_FLIGHT.inc()
            sid = stream_key(seg)
            self._queues.setdefault(sid, deque()).append(_Item(event, seg, self._generation))
            if sid not in self._workers:
                self._workers[sid] = asyncio.ensure_future(self._work(sid))

    async def _work(self, sid: str) -> None:
        """Work one leg's queue in order (one task per leg with records waiting)."""
        queue = self._queues[sid]
        try:
            while queue:
                item = queue.popleft()
                detached = False
                try:
                    detached = await self._handle(sid, item, list(s.seg for s in queue))
                except Exception as exc:  # never leave a leg stuck on a bug
                    SEGMENTS.labels(KIND_NAMES[item.seg.kind], "error").inc()
                    log.exception("segment failed", extra={
                        "stage": "transcriber", "call_id": item.seg.call_id, "leg": LEG_NAMES[item.seg.leg],
                        "seq": item.seg.seq, "error": type(exc).__name__})
                finally:
                    if not detached:
                        self._done(item)
        finally:
            # No await between the last `while queue` check and here: a record that arrives
            # later finds no worker for its leg and starts one.
            self._workers.pop(sid, None)
            if not queue:
                self._queues.pop(sid, None)

    def _done(self, item: _Item) -> None:
        item.event.ack()
        IN_FLIGHT.dec()
        assert self._slots is not None
        self._slots.release()

    # -- one record --------------------------------------------------------------------------------------

    async def _handle(self, sid: str, item: _Item, waiting: list[events_pb2.SpeechSegment]) -> bool:
        """Handle one record in the leg's order; True when a partial decode was detached (its own
        task acknowledges the record)."""
        seg = item.seg
        kind = KIND_NAMES[seg.kind]
        if item.generation != self._generation:
            return False  # fetched before a rebalance: redelivered to the partition's owner
        done = self.progress.get(sid)
        if done is not None and tuple(done["key"]) >= order_key(seg):
            SEGMENTS.labels(kind, "duplicate").inc()
            return False
        if seg.kind == KIND_PARTIAL:
            if (self.settings.transcriber_skip_stale_partials and stale_partial(seg, waiting)) \
                    or sid in self._partials:
                SEGMENTS.labels(kind, "stale").inc()  # a newer record waits, or a partial is decoding
                return False
            # Decoded beside the leg's queue, so the final never waits for a partial's decode; it is
            # published only if it is ready before the final (see _publish).
            # submitted now, so it is decoded before anything of the leg that comes after it
            submitted = self._submit(seg)
            partial = self._partials[sid] = _Partial(item)
            asyncio.ensure_future(self._partial(sid, partial, submitted))
            return True
        if seg.kind == KIND_END:
            out = leg_complete_event(seg, emitted_at_us=time.time_ns() // 1000)
            outcome = "end"
        else:
            result, error = await self._transcribe(seg)
            out = transcript_event(seg, result, emitted_at_us=time.time_ns() // 1000, error=error)
            outcome = "error" if error else ("transcribed" if out.text else "empty")
        if not await self._publish(sid, item, out):
            return False
        SEGMENTS.labels(kind, outcome).inc()
        if seg.emitted_at_us:
            LAG_SECONDS.labels(kind).observe(max(0.0, (out.emitted_at_us - seg.emitted_at_us) / 1e6))
        log.info("transcript", extra={
            "stage": "transcriber", "call_id": seg.call_id, "leg": LEG_NAMES[seg.leg], "seq": seg.seq,
            "kind": kind, "words": len(out.words), "chars": len(out.text), "outcome": outcome})
        return False

    async def _partial(self, sid: str, partial: _Partial, submitted: tuple[asyncio.Future, float]) -> None:
        item, seg = partial.item, partial.item.seg
        try:
            result, _ = await self._transcribe(seg, submitted)
            if result is None or not result.text:
                SEGMENTS.labels("partial", "empty").inc()
                return
            out = transcript_event(seg, result, emitted_at_us=time.time_ns() // 1000)
            if await self._publish(sid, item, out, partial=partial):
                SEGMENTS.labels("partial", "transcribed").inc()
                if seg.emitted_at_us:
                    LAG_SECONDS.labels("partial").observe(max(0.0, (out.emitted_at_us - seg.emitted_at_us) / 1e6))
            else:
                SEGMENTS.labels("partial", "stale").inc()
        except Exception as exc:
            log.exception("partial failed", extra={"stage": "transcriber", "call_id": seg.call_id,
                                                   "seq": seg.seq, "error": type(exc).__name__})
        finally:
            if self._partials.get(sid) is partial:
                del self._partials[sid]
            self._done(item)

    async def _publish(self, sid: str, item: _Item, out: events_pb2.TranscriptEvent, *,
                       partial: _Partial | None = None) -> bool:
        """Publish in the leg's order and remember the progress once Kafka has the record.

        Under the leg's lock: a final marks the partial still decoding as superseded, and a
        partial is published only if it was not superseded, so a partial never follows its final.
        Returns False when nothing was published (superseded partial, or a rebalance)."""
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:
            if item.generation != self._generation:
                return False
            if partial is not None:
                if partial.superseded:
                    return False
            else:
                running = self._partials.get(sid)
                if running is not None:
                    running.superseded = True
            fut = await self.transcripts.send(key=item.seg.call_id.encode(), value=out.SerializeToString())
            await fut  # delivered before it counts as done (the progress entry says so)
            self._save(sid, item, item.seg)
        if not self._partials.get(sid) and not self._queues.get(sid) and sid not in self._workers:
            self._locks.pop(sid, None)
        return True

    def _submit(self, seg: events_pb2.SpeechSegment) -> tuple[asyncio.Future, float]:
        """Queue the decode in the thread pool now (the pool works in submission order)."""
        loop = asyncio.get_running_loop()
        fn = self.asr.transcribe_partial if seg.kind == KIND_PARTIAL else self.asr.transcribe
        return loop.run_in_executor(self.executor, fn, segment_audio(seg), seg.sample_rate_hz), time.perf_counter()

    async def _transcribe(self, seg: events_pb2.SpeechSegment,
                          submitted: tuple[asyncio.Future, float] | None = None
                          ) -> tuple[TranscriptResult | None, str | None]:
        fut, t0 = submitted or self._submit(seg)
        try:
            result = await fut
        except AudioInputError as exc:
            BAD_RECORDS.labels("audio").inc()
            log.warning("segment audio refused by the transcriber", extra={
                "stage": "transcriber", "call_id": seg.call_id, "seq": seg.seq, "error": str(exc)})
            return None, "audio"
        except AsrError as exc:
            log.error("transcription failed", extra={
                "stage": "transcriber", "call_id": seg.call_id, "seq": seg.seq, "error": str(exc)[:300]})
            if seg.kind == KIND_PARTIAL:
                return None, None  # a partial is only a hint: nothing to publish
            return None, type(exc).__name__
        finally:
            DECODE_SECONDS.labels(KIND_NAMES[seg.kind]).observe(time.perf_counter() - t0)
        return result, None

    def _save(self, sid: str, item: _Item, seg: events_pb2.SpeechSegment) -> None:
        """Remember the leg's progress (in the partition of the record; it only moves forward),
        and now and then drop the entries of legs that ended long ago on that partition."""
        if item.generation != self._generation:
            return
        from stream_processor.stages.vad.agent import in_partition_of

        now = time.time()
        partition = item.event.message.partition
        key = order_key(seg)
        with in_partition_of(item.event):
            done = self.progress.get(sid)
            if done is None or tuple(done["key"]) < key:
                self.progress[sid] = {"key": list(key), "partition": partition,
                                      "done_at": now if seg.kind == KIND_END else None}
            if now - self._purged_at.get(partition, 0.0) >= 60.0:
                self._purged_at[partition] = now
                retention = self.settings.transcriber_state_retention_seconds
                for k, value in list(self.progress.items()):
                    if value.get("partition") == partition and value.get("done_at") \
                            and now - value["done_at"] >= retention:
                        del self.progress[k]

    async def _dead_letter(self, msg: Any, key: bytes | None, value: bytes | None, reason: str) -> None:
        headers = [("lupita-reason", reason.encode()),
                   ("lupita-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode())]
        try:
            await self.dead_letters.send(key=key, value=value, headers=headers)
        except Exception as exc:
            log.error("dead-letter publish failed", extra={"stage": "transcriber", "error": repr(exc)[:300]})

    # -- rebalance, shutdown -------------------------------------------------------------------------------

    async def _on_rebalance_complete(self, sender: Any, **kwargs: Any) -> None:
        if self.probes is not None:
            self.probes.set_ready(True)

    async def _on_partitions_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Records already taken are redelivered to the partitions' new owners (maybe this worker):
        # the queued ones are skipped, a decode in progress publishes nothing.
        self._generation += 1
        if self.probes is not None:
            self.probes.set_ready(False)

    async def _on_before_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """SIGTERM: give the decodes in progress a moment to publish, then stop the pool."""
        workers = list(self._workers.values())
        if workers:
            with contextlib.suppress(Exception):
                await asyncio.wait(workers, timeout=self.settings.recorder_drain_seconds)
        self.executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.asr.close()
