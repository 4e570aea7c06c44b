"""The ``transcriber`` stage: speech.segments → transcripts (partials + finals, word timings in call time).

The pure parts are in :mod:`.core`; this is the thin Faust wrapper (:class:`TranscriberAgent`):

- consumes ``speech.segments`` with manual acks: each record is acknowledged only after its
  transcript was delivered to Kafka (or it was skipped on purpose), so a crash never loses one;
  out-of-order acks are fine (Faust commits the highest contiguous offset);
- keeps one queue per (call, leg), worked in order by one task; decoding runs on
  ``transcriber_threads`` threads of a :class:`~.scheduler.DecodeScheduler`, never on the event
  loop, different legs in parallel, **by value, not arrival**: the person's finals first, then the
  agent's, partials only while no final waits (every such decision is a metric), plus
  ``transcriber_person_threads`` threads for the person's finals only (a started decode cannot be
  interrupted: this way a person's final does not wait for one); at most
  ``transcriber_max_in_flight`` records are taken and not yet done (backpressure);
- a PARTIAL is decoded beside its leg's queue, so the final behind it never waits for a
  hypothesis: the partial is published only if it is ready before the final of its leg (a
  per-leg publish lock decides), so on ``transcripts`` a leg's partials always precede its final;
  at most one partial per leg decodes at a time, and a partial is skipped when a newer record of
  the leg already waits (``transcriber_skip_stale_partials``: under load partials go first), when
  any final waits for a decode, or (still queued) once its final has been published;
- packs (``LUPITA_ASR_PACK_MAX_SECONDS`` > 0): when several finals of a leg wait, they are taken
  together (stale partials between them skipped as usual) and decoded in one window
  (:meth:`~stream_processor.models.asr.base.Transcriber.transcribe_many`), then published one by
  one in order as before; a packed decode that fails falls back to one decode per segment;
- batches (``LUPITA_ASR_BATCH_MAX_WINDOWS`` > 1): finals (single, or a leg's packed finals) waiting
  in the scheduler's same class with the same vocabulary, of any leg or call, are decoded in one
  batched call when a decode thread frees up (:meth:`~.scheduler.DecodeScheduler.submit_batch`);
  each window is its own row of the batch, so no word can cross between them;
- vocabulary (``LUPITA_TRANSCRIBER_VOCABULARY``): a second agent reads ``call.lifecycle``; at a
  call's start the person's facts are read once by phone hash and every decode of the call is
  biased toward their names, places and medications (plus, if configured, a health lexicon:
  :mod:`.vocabulary`),
  passed with the decode, never kept in the shared model;
- deduplicates redelivered segments (a vad replay after a restart, or its own redelivery):
  per (call, leg) the highest :func:`order_key` done is kept in the changelog-backed table
  ``transcriber_progress``, written only after the transcript was delivered; a record at or
  below it is skipped. The entry is kept ``transcriber_state_retention_seconds`` after the leg's
  END_OF_LEG and removed later while records of its partition are processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from lupita.topics import CALL_LIFECYCLE, SPEECH_SEGMENTS, TRANSCRIPTS
from lupita.v1 import events_pb2

from stream_processor import faust_kit, records
from stream_processor.models.asr.base import AsrError, AudioInputError, Transcriber, TranscriptResult
from stream_processor.records import KIND_END, KIND_FINAL, KIND_NAMES, KIND_PARTIAL, LEG_BY_NAME, LEG_NAMES
from stream_processor.stages.transcriber.core import (
    empty_reason, guard_action_name, leg_complete_event, order_key, parse_segment, segment_audio, segment_seconds,
    stale_partial, stream_key, transcript_event,
)
from stream_processor.stages.transcriber.scheduler import DecodeScheduler, job_class
from stream_processor.stages.transcriber.settings import TranscriberSettings
from stream_processor.stages.transcriber.vocabulary import CallVocabularies, read_person_facts
from stream_processor.stages.transcriber.metrics import (
    BAD_RECORDS, DECISIONS, DECODE_SECONDS, EMPTY_FINALS, GAP_WORDS, GUARD_ACTIONS, IN_FLIGHT, LAG_SECONDS, PACKED, SEGMENTS,
    VOCABULARIES, VOICED_FINALS,
)

log = logging.getLogger(__name__)

TRANSCRIBER_DEAD_LETTERS = "stream-processor.transcriber-dead-letters"
TOPICS = (SPEECH_SEGMENTS, TRANSCRIPTS, TRANSCRIBER_DEAD_LETTERS)  # read and written
PROGRESS_TABLE = "transcriber_progress"
TABLES = (PROGRESS_TABLE,)  # changelog-backed

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

    def __init__(self, settings: TranscriberSettings, *, app: Any, transcriber: Transcriber | None = None,
                 drain_seconds: float = 20.0) -> None:
        from stream_processor.models.asr.factory import build_transcriber

        self.settings = settings
        self.drain_seconds = drain_seconds
        self.app = app
        decoders = settings.transcriber_threads + settings.transcriber_person_threads
        # the local model runs as many decodes in parallel as there are decode threads
        self.asr = transcriber or build_transcriber(settings.model_copy(
            update={"asr_num_workers": max(settings.asr_num_workers, decoders)}))
        # Lupita's leg: the same model, with its own beam / ladder when configured
        self.asr_agent = self.asr.with_decoding(beam_size=settings.transcriber_agent_beam_size,
                                                temperatures=settings.transcriber_agent_temperatures)
        self.scheduler = DecodeScheduler(settings.transcriber_threads, name="transcriber",
                                         max_batch=settings.asr_batch_max_windows,
                                         person_threads=settings.transcriber_person_threads)
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
        self.vocabularies = CallVocabularies(max_terms=settings.transcriber_vocabulary_max_terms,
                                             lexicon=settings.transcriber_vocabulary_lexicon)
        self._facts_store: Any = None
        if settings.transcriber_vocabulary:
            self.lifecycle = app.topic(settings.topic(CALL_LIFECYCLE), **raw)
            app.agent(self.lifecycle, name="transcriber-vocabulary")(self._vocabulary_agent)
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
            except records.BadRecord as exc:
                BAD_RECORDS.labels(exc.reason).inc()
                log.warning("bad record skipped", extra={
                    "stage": "transcriber", "topic": msg.topic, "partition": msg.partition,
                    "offset": msg.offset, "reason": exc.reason, "error": str(exc)})
                await faust_kit.dead_letter(self.dead_letters, msg, event.key, event.value, exc.reason, stage="transcriber")
                faust_kit.acknowledge(event, stage="transcriber")
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
                batch = [queue.popleft()]
                batch += self._take_pack(batch[0], queue)
                decoded: dict[int, tuple[TranscriptResult | None, str | None]] = {}
                if len(batch) > 1:
                    try:
                        decoded = await self._decode_pack(sid, batch)
                    except Exception:  # never leave the batch's records undone: one by one instead
                        log.exception("packing failed", extra={"stage": "transcriber"})
                for n, item in enumerate(batch):
                    later = [s.seg for s in batch[n + 1:]] + [s.seg for s in queue]
                    await self._work_one(sid, item, later, decoded.get(id(item)))
        finally:
            # No await between the last `while queue` check and here: a record that arrives
            # later finds no worker for its leg and starts one.
            self._workers.pop(sid, None)
            if not queue:
                self._queues.pop(sid, None)

    async def _work_one(self, sid: str, item: _Item, later: list[events_pb2.SpeechSegment],
                        decoded: tuple[TranscriptResult | None, str | None] | None) -> None:
        detached = False
        try:
            # a broker error the publishing did not retry itself (a table write before the
            # changelog's metadata is known) is retried, never dead-lettered
            detached = await faust_kit.deliver(
                lambda: self._handle(sid, item, later, decoded), stage="transcriber",
                what="record", stopped=lambda: item.generation != self._generation)
        except faust_kit.Abandoned:
            pass  # revoked: the new owner redoes it (acknowledging a revoked record is a no-op)
        except Exception as exc:  # a bug: never leave a leg stuck, never lose the record
            SEGMENTS.labels(KIND_NAMES[item.seg.kind], "error").inc()
            log.exception("segment failed; dead-lettered", extra={
                "stage": "transcriber", "call_id": item.seg.call_id, "leg": LEG_NAMES[item.seg.leg],
                "seq": item.seg.seq, "error": type(exc).__name__})
            with contextlib.suppress(faust_kit.Abandoned):
                await faust_kit.dead_letter(
                    self.dead_letters, item.event.message, item.event.key, item.event.value, "error",
                    stage="transcriber", stopped=lambda: item.generation != self._generation)
        finally:
            if not detached:
                self._done(item)

    def _take_pack(self, first: _Item, queue: deque[_Item]) -> list[_Item]:
        """More records of the leg to handle with ``first`` (a final) so their finals share one
        decode: the finals that wait right behind it while they fit ``asr_pack_max_seconds``, and
        the stale partials between them (skipped as usual). Nothing when packing is off."""
        limit, gap = self.settings.asr_pack_max_seconds, self.settings.asr_pack_gap_seconds
        if not limit or first.seg.kind != KIND_FINAL:
            return []
        seconds = segment_seconds(first.seg)
        taken: list[_Item] = []
        while queue:
            nxt = queue[0]
            if nxt.seg.kind == KIND_PARTIAL and len(queue) > 1 and self.settings.transcriber_skip_stale_partials:
                taken.append(queue.popleft())  # stale: a newer record of the leg waits behind it
                continue
            if nxt.seg.kind != KIND_FINAL or seconds + gap + segment_seconds(nxt.seg) > limit:
                break
            seconds += gap + segment_seconds(nxt.seg)
            taken.append(queue.popleft())
        while taken and taken[-1].seg.kind != KIND_FINAL:
            queue.appendleft(taken.pop())  # only finals end a pack
        return taken

    async def _decode_pack(self, sid: str, batch: list[_Item]
                           ) -> dict[int, tuple[TranscriptResult | None, str | None]]:
        """One decode of the batch's finals (not yet done, of this generation); id(item) -> (result,
        None). Empty when fewer than two remain or the packed decode fails (each is then decoded
        on its own by _handle)."""
        done = self.progress.get(sid)
        finals = [it for it in batch if it.seg.kind == KIND_FINAL and it.generation == self._generation
                  and (done is None or tuple(done["key"]) < order_key(it.seg))]
        if len(finals) < 2:
            return {}
        first = finals[0].seg
        t0 = time.perf_counter()
        cf = self._submit_finals(first, [(segment_audio(it.seg), it.seg.sample_rate_hz) for it in finals])
        try:
            results = await asyncio.wrap_future(cf)  # type: ignore[arg-type]  # a final is never refused
        except Exception as exc:  # bad audio in one of them, a backend error: one by one instead
            log.warning("packed decode failed; decoding the segments one by one", extra={
                "stage": "transcriber", "call_id": first.call_id, "segments": len(finals),
                "error": type(exc).__name__})
            return {}
        finally:
            DECODE_SECONDS.labels("packed").observe(time.perf_counter() - t0)
        if len(results) != len(finals):
            return {}
        for r in results:
            if "packed" in r.guard_actions:
                PACKED.inc()
            GAP_WORDS.inc(r.guard_actions.count("pack_gap_word"))
        return {id(it): (r, None) for it, r in zip(finals, results)}

    def _done(self, item: _Item) -> None:
        faust_kit.acknowledge(item.event, stage="transcriber")  # once its progress is on the broker
        IN_FLIGHT.dec()
        assert self._slots is not None
        self._slots.release()

    # -- vocabulary ----------------------------------------------------------------------------------------

    def vocabulary(self, call_id: str) -> tuple[str, ...]:
        """What a decode of the call is biased toward (nothing when the setting is off)."""
        return self.vocabularies.get(call_id) if self.settings.transcriber_vocabulary else ()

    async def _vocabulary_agent(self, stream: Any) -> Any:
        """call.lifecycle -> the call's vocabulary at its start (the person's facts read once)."""
        async for event in stream.events():
            try:
                life = records.parse_lifecycle(event.key, event.value)
            except records.BadRecord:
                continue  # the recorder dead-letters bad lifecycle records; nothing to learn here
            if life.WhichOneof("event") != "started" or self.vocabularies.known(life.call_id):
                continue
            facts: list[tuple[str, str, str]] = []
            outcome = "lexicon_only"
            if life.started.phone_hash:
                facts, outcome = await self._read_facts(life.started.phone_hash)
            terms = self.vocabularies.start(life.call_id, facts)
            VOCABULARIES.labels(outcome).inc()
            log.info("call vocabulary", extra={"stage": "transcriber", "call_id": life.call_id,
                                               "terms": len(terms), "facts": len(facts), "outcome": outcome})

    async def _read_facts(self, phone_hash: str) -> tuple[list[tuple[str, str, str]], str]:
        """The person's facts (one read, retried once); on failure none (the lexicon alone)."""
        from stream_processor.stores.calls_db import CallStore

        if self._facts_store is None:
            self._facts_store = CallStore(self.settings.postgres_dsn.get_secret_value(), connect_timeout=5)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                facts = await loop.run_in_executor(None, read_person_facts, self._facts_store.run, phone_hash)
                return facts, ("facts" if facts else "no_facts")
            except Exception as exc:  # the vocabulary is a hint: decoding never waits for it
                log.warning("facts for the call vocabulary could not be read", extra={
                    "stage": "transcriber", "attempt": attempt, "error": type(exc).__name__})
        return [], "read_failed"

    # -- one record --------------------------------------------------------------------------------------

    async def _handle(self, sid: str, item: _Item, waiting: list[events_pb2.SpeechSegment],
                      decoded: tuple[TranscriptResult | None, str | None] | None = None) -> bool:
        """Handle one record in the leg's order; True when a partial decode was detached (its own
        task acknowledges the record). ``decoded``: a final's result from a packed decode."""
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
            # published only if it is ready before the final (see _publish), and not decoded at all
            # when a final waits for a decode (the scheduler refuses it) or is published first.
            partial = _Partial(item)
            submitted = self._submit(seg, wanted=lambda: not partial.superseded)
            if submitted is None:
                SEGMENTS.labels(kind, "stale").inc()
                return False
            self._partials[sid] = partial
            asyncio.ensure_future(self._partial(sid, partial, submitted))
            return True
        if seg.kind == KIND_END:
            out = leg_complete_event(seg, emitted_at_us=time.time_ns() // 1000)
            outcome = "end"
            self.vocabularies.leg_ended(seg.call_id, LEG_NAMES[seg.leg])
        else:
            result, error = decoded if decoded is not None else await self._transcribe(seg)
            out = transcript_event(seg, result, emitted_at_us=time.time_ns() // 1000, error=error)
            outcome = "error" if error else ("transcribed" if out.text else "empty")
        if not await self._publish(sid, item, out):
            return False
        SEGMENTS.labels(kind, outcome).inc()
        for action in out.guard_actions:
            GUARD_ACTIONS.labels(kind, guard_action_name(action)).inc()
        if seg.kind == KIND_FINAL:  # the vad called every final's audio speech
            VOICED_FINALS.labels(LEG_NAMES[seg.leg]).inc()
            if outcome != "transcribed":
                EMPTY_FINALS.labels(LEG_NAMES[seg.leg], empty_reason(out)).inc()
        if seg.kind != KIND_END and seg.leg != LEG_BY_NAME["person"]:
            person = self.progress.get(f"{seg.call_id}:person")
            if person is not None and person.get("done_at"):
                DECISIONS.labels("agent_after_call").inc()  # the person's leg had ended before it
        if seg.emitted_at_us:
            LAG_SECONDS.labels(kind).observe(max(0.0, (out.emitted_at_us - seg.emitted_at_us) / 1e6))
        log.info("transcript", extra={
            "stage": "transcriber", "call_id": seg.call_id, "leg": LEG_NAMES[seg.leg], "seq": seg.seq,
            "kind": kind, "words": len(out.words), "chars": len(out.text), "outcome": outcome})
        return False

    async def _partial(self, sid: str, partial: _Partial, submitted: tuple[asyncio.Future, float]) -> None:
        item, seg = partial.item, partial.item.seg
        try:
            try:
                result, _ = await self._transcribe(seg, submitted)
            except asyncio.CancelledError:
                if not submitted[0].cancelled() or not partial.superseded:
                    raise
                SEGMENTS.labels("partial", "stale").inc()  # its final came first: never decoded
                return
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
            value = out.SerializeToString()
            try:  # delivered before it counts as done (the progress entry says so)
                await faust_kit.deliver(
                    lambda: faust_kit.publish(self.transcripts, item.seg.call_id.encode(), value),
                    stage="transcriber", what="transcript", call_id=item.seg.call_id,
                    stopped=lambda: item.generation != self._generation)
            except faust_kit.Abandoned:
                return False  # the partition was revoked: its new owner redoes the segment
            self._save(sid, item, item.seg)
        if not self._partials.get(sid) and not self._queues.get(sid) and sid not in self._workers:
            self._locks.pop(sid, None)
        return True

    def _submit_finals(self, seg: events_pb2.SpeechSegment, items: list[tuple[Any, int]]) -> Any:
        """Queue the finals ``items`` of ``seg``'s leg as one request (a concurrent future of their
        results): batchable with other legs' and calls' requests of the same vocabulary when
        ``asr_batch_max_windows`` > 1, else one ``transcribe_many`` job."""
        cls = job_class(person=seg.leg == LEG_BY_NAME["person"], final=True)
        vocabulary = self.vocabulary(seg.call_id)
        asr = self._asr(seg)
        if self.settings.asr_batch_max_windows > 1:  # one batch decodes with one leg's options
            return self.scheduler.submit_batch(cls, functools.partial(asr.transcribe_batch, vocabulary=vocabulary),
                                               items, key=("asr", asr is self.asr, vocabulary))
        return self.scheduler.submit(cls, functools.partial(asr.transcribe_many, vocabulary=vocabulary), items)

    def _asr(self, seg: events_pb2.SpeechSegment) -> Transcriber:
        """The transcriber of ``seg``'s leg (Lupita's may decode with other options)."""
        return self.asr if seg.leg == LEG_BY_NAME["person"] else self.asr_agent

    def _submit(self, seg: events_pb2.SpeechSegment, *, wanted: Any = None
                ) -> tuple[asyncio.Future, float] | None:
        """Queue the decode in the scheduler now, in its class (person final, agent final, partial);
        None when a partial is refused because a final waits."""
        if seg.kind != KIND_PARTIAL and self.settings.asr_batch_max_windows > 1:
            async def first(f: asyncio.Future) -> TranscriptResult:
                return (await f)[0]

            cf = self._submit_finals(seg, [(segment_audio(seg), seg.sample_rate_hz)])
            return asyncio.ensure_future(first(asyncio.wrap_future(cf))), time.perf_counter()
        partial = seg.kind == KIND_PARTIAL
        fn = self._asr(seg).transcribe_partial if partial else self._asr(seg).transcribe
        cf = self.scheduler.submit(job_class(person=seg.leg == LEG_BY_NAME["person"], final=not partial),
                                   functools.partial(fn, vocabulary=self.vocabulary(seg.call_id)),
                                   segment_audio(seg), seg.sample_rate_hz, wanted=wanted)
        if cf is None:
            return None
        return asyncio.wrap_future(cf), time.perf_counter()

    async def _transcribe(self, seg: events_pb2.SpeechSegment,
                          submitted: tuple[asyncio.Future, float] | None = None
                          ) -> tuple[TranscriptResult | None, str | None]:
        fut, t0 = submitted or self._submit(seg)  # type: ignore[misc]  # a final is never refused
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
        from stream_processor.faust_kit import in_partition_of

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

    # -- rebalance, shutdown -------------------------------------------------------------------------------

    async def _on_partitions_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Records already taken are redelivered to the partitions' new owners (maybe this worker):
        # the queued ones are skipped, a decode in progress publishes nothing.
        self._generation += 1

    async def _on_before_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """SIGTERM: give the decodes in progress a moment to publish, then stop the pool."""
        workers = list(self._workers.values())
        if workers:
            with contextlib.suppress(Exception):
                await asyncio.wait(workers, timeout=self.drain_seconds)
        self.scheduler.shutdown(cancel_futures=True)
        with contextlib.suppress(Exception):
            self.asr.close()
        if self._facts_store is not None:
            with contextlib.suppress(Exception):
                self._facts_store.close()
