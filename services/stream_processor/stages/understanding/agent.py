"""The ``understanding`` stage: transcripts + call.lifecycle → alerts (live) and call.analysis (at the end).

The thin Faust wrapper around the pure :class:`~.core.CallUnderstanding`:

- consumes ``transcripts`` and ``call.lifecycle`` together (one channel, so Faust co-partitions
  them: a call's records of both topics come to the same worker, keyed by call_id);
- keeps one entry per call in the changelog-backed table ``understanding_calls``: the
  CallUnderstanding as JSON (conversation state, alerts raised, call metadata), the legs whose
  ``leg_complete`` arrived, whether ``CallEnded`` was seen, and the status
  (``open`` → ``done`` | ``skipped`` | ``failed``; terminal entries are tombstones kept
  ``understanding_state_retention_seconds`` so redeliveries are ignored, then removed);
- a FINAL transcript with text is added to the conversation; on the person's leg the alert
  catalogue is scanned, and each new alert is delivered to ``alerts`` at once (a broker error is
  retried until the broker has it; the record is neither dead-lettered nor acknowledged
  meanwhile), then kept in the entry as pending and stored in Postgres ``call_alerts`` in the
  thread pool; only then is it dropped from the entry (any later record of the call restarts a
  pending write that a dead worker left). Partials only count in a metric (the
  final of the same segment supersedes them); blank finals (the ASR guards removed everything)
  are counted and dropped;
- when ``CallEnded`` was seen AND both legs are ``leg_complete``: ``finish()`` runs in the thread
  pool (analyzer → embedder → Weaviate → Postgres), then the ``CallAnalysisEvent`` is published on
  ``call.analysis`` and the entry becomes a ``done`` tombstone;
- a call whose ``CallStarted`` has ``recording_consent = false`` is skipped: its entry becomes a
  ``skipped`` tombstone at once and nothing derived is written or published. Transcripts that
  arrive before the started event are kept in the entry; their alerts are raised when the
  consent is known.

Delivery: the agent acknowledges records manually. The record that triggered a store write
(an alert's transcript, the record that completed the call) stays unacknowledged until the
write succeeded, so a crashed worker redoes it (every write is idempotent). A store that is
down: the sinks retry with backoff within their budget (``LUPITA_SINK_RETRY_*``); when that is
used up (:class:`~stream_processor.stores.SinkUnavailable`) the work waits
``understanding_retry_initial_seconds`` (doubling up to ``understanding_retry_max_seconds``, with
jitter: :class:`stream_processor.retry.RetryPolicy`) and tries again, in its own task: the agent
goes on with every other call meanwhile, only the commit of that partition's offsets waits. A
broker that is down is retried the same way (:func:`stream_processor.faust_kit.deliver`). A
permanent store error (:class:`~stream_processor.stores.SinkRejected`) is logged, counted and
the call marked ``failed`` (no endless loop); ``lupita replay`` is the way to redo such a call.
A bad record goes to ``stream-processor.understanding-dead-letters`` with its reason; a bug
while handling a record is logged with the call id, counted (``lupita_understanding_errors_total``)
and the record dead-lettered (reason ``error``), never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


from lupita.topics import ALERTS, CALL_ANALYSIS, CALL_LIFECYCLE, TRANSCRIPTS
from lupita.v1 import analysis_pb2, events_pb2

from stream_processor import faust_kit, records
from stream_processor.errors import safe_error
from stream_processor.faust_kit import in_partition_of
from stream_processor.retry import RetryPolicy
from stream_processor.stages.understanding.settings import UnderstandingSettings
from stream_processor.stages.understanding.metrics import (
    ALERT_LATENCY, ALERTS_RAISED, BAD_RECORDS, CALLS, ERRORS, FINISH_SECONDS, IN_PROGRESS, RECORDS, SPEECH_SECONDS, STORE_RETRIES,
)
from stream_processor.stages.understanding.core import CallUnderstanding, FinishResult, UnderstandingServices, finish_call
from stream_processor.stores import SinkUnavailable, Stopped
from stream_processor.contracts import AlertHit, EvidenceSpan, Utterance
from stream_processor.records import LEG_NAMES

log = logging.getLogger("stream_processor.stages.understanding.agent")  # also when run with -m

STAGE = "understanding"
CALLS_TABLE = "understanding_calls"
TABLES = (CALLS_TABLE,)  # changelog-backed
UNDERSTANDING_DEAD_LETTERS = "stream-processor.understanding-dead-letters"
TOPICS = (TRANSCRIPTS, CALL_LIFECYCLE, ALERTS, CALL_ANALYSIS, UNDERSTANDING_DEAD_LETTERS)

OPEN, DONE, SKIPPED, FAILED = "open", "done", "skipped", "failed"
LEG_IDS = {name: leg for leg, name in LEG_NAMES.items()}
BOTH_LEGS = frozenset(LEG_NAMES.values())



class _Revoked(Exception):
    """The partition went to another owner (or back to us): the redelivered record redoes it."""


def parse_transcript(key: bytes | None, value: bytes | None) -> events_pb2.TranscriptEvent:
    """Decode and validate a ``transcripts`` record; raises :class:`~stream_processor.records.BadRecord`."""
    ev = events_pb2.TranscriptEvent()
    try:
        ev.ParseFromString(value or b"")
    except Exception as exc:
        raise records.BadRecord(f"transcripts value is not a TranscriptEvent protobuf: {exc}",
                           reason="undecodable") from exc
    records.check_call_id(ev.call_id, key)
    if ev.leg not in LEG_NAMES:
        raise records.BadRecord(f"transcript of leg {ev.leg}: expected LEG_LUPITA or LEG_PERSON")
    if not ev.leg_complete and not ev.segment_end_us >= ev.segment_start_us:
        raise records.BadRecord(f"transcript seq {ev.seq}: segment ends ({ev.segment_end_us} us) before it starts "
                           f"({ev.segment_start_us} us)")
    return ev


def utterance_of(ev: events_pb2.TranscriptEvent) -> Utterance:
    """A final TranscriptEvent as an Utterance (seconds of call time; a segment padded to before
    call time 0 is clipped at 0)."""
    start = max(ev.segment_start_us, 0) / 1e6
    end = max(ev.segment_end_us, 0) / 1e6
    conf = ev.confidence if ev.HasField("confidence") else 1.0
    return Utterance(ev.call_id, LEG_NAMES[ev.leg], int(ev.seq), start, end, ev.text, float(conf))


def words_of(ev: events_pb2.TranscriptEvent) -> list[tuple[str, float | None]] | None:
    """The transcript's words as ``(word, probability)`` pairs for the alert scan (None when the
    backend gave no words)."""
    if not ev.words:
        return None
    return [(w.word, w.probability if w.HasField("probability") else None) for w in ev.words]


def alert_event(hit: AlertHit, *, raised_at_us: int, transcript_emitted_at_us: int = 0) -> analysis_pb2.AlertEvent:
    e = hit.evidence
    return analysis_pb2.AlertEvent(
        call_id=hit.call_id, cue_id=hit.cue_id, severity=hit.severity, leg=LEG_IDS[e.leg], seq=e.seq,
        start_us=round(e.start_s * 1e6), end_us=round(e.end_s * 1e6), evidence=e.text,
        char_start=e.char_start, char_end=e.char_end, raised_at_us=raised_at_us,
        transcript_emitted_at_us=transcript_emitted_at_us, to_verify=hit.to_verify, verification=hit.verification,
    )


def analysis_event(call_id: str, result: FinishResult, *, processed_at_us: int) -> analysis_pb2.CallAnalysisEvent:
    a = result.analysis
    return analysis_pb2.CallAnalysisEvent(
        call_id=call_id, topics=list(a.topics), emotion_primary=a.emotion_primary,
        behavioral_codes=list(a.behavioral_codes), summary=a.summary, facts=len(a.facts),
        weaviate_id=result.weaviate_id or "", analyzer=a.analyzer, processed_at_us=processed_at_us,
        s3_uri=result.s3_uri or "",
    )


def hit_to_dict(hit: AlertHit) -> dict[str, Any]:
    return dataclasses.asdict(hit)


def hit_from_dict(data: dict[str, Any]) -> AlertHit:
    return AlertHit(**{**data, "evidence": EvidenceSpan(**data["evidence"])})


def new_entry(call_id: str, partition: int) -> dict[str, Any]:
    return {"cu": CallUnderstanding(call_id).to_dict(), "legs_complete": [], "ended": False, "status": OPEN,
            "partition": partition, "done_at": None}


def ready_to_finish(entry: dict[str, Any]) -> bool:
    return (entry["status"] == OPEN and entry["ended"] and entry["cu"].get("consent") is True
            and BOTH_LEGS <= set(entry["legs_complete"]))


def _now_us() -> int:
    return time.time_ns() // 1000


def _call_of(key: bytes | None) -> dict[str, str]:
    """``{"call_id": ...}`` for a log record when the record's key is a valid call id."""
    try:
        call_id = (key or b"").decode()
    except UnicodeDecodeError:
        return {}
    return {"call_id": call_id} if records.is_valid_call_id(call_id) else {}


class UnderstandingStage:
    """The understanding stage wired into a Faust app (shared with the worker's other stages)."""

    def __init__(self, settings: UnderstandingSettings, *, app: Any,
                 services: UnderstandingServices | None = None, drain_seconds: float = 20.0) -> None:
        self.settings = settings
        self.app = app
        self.drain_seconds = drain_seconds
        self.stop = threading.Event()
        self.services = services or UnderstandingServices.from_settings(settings, stop=self.stop)
        self.executor = ThreadPoolExecutor(settings.understanding_threads, thread_name_prefix="understanding")
        self._generation = 0
        self._finishing: dict[str, int] = {}  # call_id -> generation of its running finish
        self._writing_alerts: dict[str, int] = {}  # call_id -> generation of its running alert write
        self._tasks: set[asyncio.Task] = set()
        self._purged_at: dict[int, float] = {}

        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.transcripts_topic = settings.topic(TRANSCRIPTS)
        self.lifecycle_topic = settings.topic(CALL_LIFECYCLE)
        self.source = self.app.topic(self.transcripts_topic, self.lifecycle_topic, **raw)
        self.alerts = self.app.topic(settings.topic(ALERTS), **raw)
        self.analysis = self.app.topic(settings.topic(CALL_ANALYSIS), **raw)
        self.dead_letters = self.app.topic(settings.topic(UNDERSTANDING_DEAD_LETTERS), **raw)
        self.calls = self.app.Table(CALLS_TABLE, key_type=str, partitions=settings.topic_partitions)
        self.app.agent(self.source, name=STAGE)(self._agent)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self.app.on_before_shutdown.connect(self._on_before_shutdown)

    # -- intake --------------------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> Any:
        async for event in stream.noack().events():
            msg = event.message
            generation = self._generation
            try:
                # a broker error (e.g. a table write before the changelog's metadata is known) is
                # retried, the record applied again; never dead-lettered
                held = await faust_kit.deliver(lambda: self._handle(event, generation), stage=STAGE,
                                               what="record", stopped=self._stopped(generation))
            except faust_kit.Abandoned:
                continue  # revoked or stopping while the broker was down: redelivered, not acknowledged
            except records.BadRecord as exc:
                BAD_RECORDS.labels(exc.reason).inc()
                log.warning("bad record dead-lettered", extra={
                    "stage": STAGE, "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                    "reason": exc.reason, "error": str(exc)})
                held = not await self._dead_letter(event, exc.reason, generation)
            except Exception as exc:  # a bug must not stop every other call: the record is kept
                BAD_RECORDS.labels("error").inc()
                ERRORS.labels("record").inc()
                log.exception("record could not be processed; dead-lettered", extra={
                    "stage": STAGE, "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                    **_call_of(event.key), "error": type(exc).__name__})
                held = not await self._dead_letter(event, "error", generation)
            if not held:
                faust_kit.acknowledge(event, stage=STAGE)  # once its table change is on the broker

    async def _dead_letter(self, event: Any, reason: str, generation: int) -> bool:
        """True once the record is on the dead-letter topic (False: abandoned, not acknowledged)."""
        try:
            await faust_kit.dead_letter(self.dead_letters, event.message, event.key, event.value, reason,
                                        stage=STAGE, stopped=self._stopped(generation))
            return True
        except faust_kit.Abandoned:
            return False

    def _stopped(self, generation: int) -> Any:
        """For :func:`faust_kit.deliver`: the partitions were revoked since, or the worker stops."""
        return lambda: generation != self._generation or self.stop.is_set()

    async def _handle(self, event: Any, generation: int) -> bool:
        """Apply one record; True when its acknowledgement is held by background work.

        Alerts are delivered to Kafka (broker errors retried until the broker has them) BEFORE
        the table says they were raised: a worker that dies in between raises them again from
        the redelivered transcript (at least once on ``alerts``; ``call_alerts`` is an upsert)."""
        msg = event.message
        if msg.topic == self.lifecycle_topic:
            life = records.parse_lifecycle(event.key, event.value)
            call_id, tr = life.call_id, None
        else:
            tr = parse_transcript(event.key, event.value)
            call_id, life = tr.call_id, None
        entry = self.calls.get(call_id) or new_entry(call_id, msg.partition)
        if entry["status"] != OPEN:
            RECORDS.labels("late").inc()
            return self._resume(event, call_id, entry, generation)
        cu = CallUnderstanding.from_dict(entry["cu"])
        svc = self.services
        hits: list[AlertHit] = []
        emitted_us = 0
        if life is not None:
            kind = life.WhichOneof("event")
            RECORDS.labels(kind).inc()
            if kind == "started":
                s = life.started
                hits = cu.start(started_at_us=s.started_at_us, phone_hash=s.phone_hash, region=s.region,
                                consent=s.recording_consent, detector=svc.detector)
                if not s.recording_consent:
                    entry.update(status=SKIPPED, done_at=time.time())
                    CALLS.labels("skipped_no_consent").inc()
                    log.info("call without recording consent: nothing is derived", extra={
                        "stage": STAGE, "call_id": call_id})
            else:
                cu.end(life.ended.ended_at_us)
                entry["ended"] = True
        elif tr.leg_complete:
            RECORDS.labels("leg_complete").inc()
            legs = set(entry["legs_complete"]) | {LEG_NAMES[tr.leg]}
            entry["legs_complete"] = sorted(legs)
        elif tr.is_partial:
            RECORDS.labels("partial").inc()
            return False  # the final of the segment supersedes it: nothing to keep
        else:
            utt = utterance_of(tr)
            before = (len(cu.conversation.utterances), cu.blank_finals)
            hits = cu.on_final(utt, svc.detector, svc.sentiment_of, words=words_of(tr))
            after = (len(cu.conversation.utterances), cu.blank_finals)
            RECORDS.labels("blank" if after[1] > before[1] else ("final" if after != before else "duplicate")).inc()
            if after[0] > before[0]:
                SPEECH_SECONDS.labels(utt.leg).inc(max(utt.end_s - utt.start_s, 0.0))
            if after == before and cu.consent is not False:
                return self._resume(event, call_id, entry, generation)  # a redelivery: nothing changed
            emitted_us = tr.emitted_at_us
        if hits:
            await self._publish_alerts(hits, emitted_us, generation)  # before the state says "raised"
        entry["cu"] = cu.to_dict()
        if hits:  # kept until call_alerts has them, so a crash before that write redoes it
            entry["pending_alerts"] = list(entry.get("pending_alerts") or []) + [hit_to_dict(h) for h in hits]
        with in_partition_of(event):
            self.calls[call_id] = entry
            self._purge(msg.partition)
        jobs = self._alert_jobs(event, call_id, entry, generation)
        if life is not None or tr.leg_complete:  # a few per call: what the call still waits for
            log.info("call progress", extra={
                "stage": STAGE, "call_id": call_id, "record": life.WhichOneof("event") if life else "leg_complete",
                "partition": msg.partition, "offset": msg.offset, "ended": entry["ended"],
                "legs_complete": entry["legs_complete"], "consent": entry["cu"].get("consent"),
                "finishing": call_id in self._finishing, "alert_writes": len(jobs)})
        if ready_to_finish(entry) and call_id not in self._finishing:
            self._finishing[call_id] = generation
            jobs.append(self._finish(event, call_id, cu, generation))
        if not jobs:
            return False
        self._spawn(self._hold(event, jobs))
        return True

    def _resume(self, event: Any, call_id: str, entry: dict[str, Any], generation: int) -> bool:
        """A record that changes nothing still restarts the alert writes its call has pending
        (a worker died before they reached Postgres); True when the record is held by them."""
        jobs = self._alert_jobs(event, call_id, entry, generation)
        if not jobs:
            return False
        self._spawn(self._hold(event, jobs))
        return True

    def _alert_jobs(self, event: Any, call_id: str, entry: dict[str, Any], generation: int) -> list[Any]:
        pending = entry.get("pending_alerts") or []
        if not pending or call_id in self._writing_alerts:
            return []
        self._writing_alerts[call_id] = generation
        return [self._write_alerts(event, call_id, [hit_from_dict(d) for d in pending], generation)]

    async def _hold(self, event: Any, jobs: list[Any]) -> None:
        """Run the record's work; acknowledge it only if all of it is done (not revoked). Work
        that raised (a bug: stores and broker are retried inside) is logged once with the call id
        and counted, and the record stays unacknowledged: a restart redoes it."""
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                ERRORS.labels("work").inc()
                log.error("work of a record failed; the record stays unacknowledged", exc_info=r, extra={
                    "stage": STAGE, **_call_of(event.key), "partition": event.message.partition,
                    "offset": event.message.offset, "error": type(r).__name__})
        if all(r is True for r in results):
            faust_kit.acknowledge(event, stage=STAGE)

    # -- alerts ----------------------------------------------------------------------------------------

    async def _publish_alerts(self, hits: list[AlertHit], transcript_emitted_at_us: int, generation: int) -> None:
        """Deliver each alert to ``alerts``; a broker error is retried until the broker has it
        (raises :class:`faust_kit.Abandoned` if the partition is revoked meanwhile)."""
        for hit in hits:
            now_us = _now_us()
            value = alert_event(hit, raised_at_us=now_us, transcript_emitted_at_us=transcript_emitted_at_us
                                ).SerializeToString()
            await faust_kit.deliver(
                lambda v=value, h=hit: faust_kit.publish(self.alerts, h.call_id.encode(), v),
                stage=STAGE, what="alert", call_id=hit.call_id, stopped=self._stopped(generation))
            ALERTS_RAISED.labels(hit.cue_id, hit.severity).inc()
            if transcript_emitted_at_us:
                ALERT_LATENCY.observe(max(0.0, (_now_us() - transcript_emitted_at_us) / 1e6))
            log.warning("alert raised", extra={
                "stage": STAGE, "call_id": hit.call_id, "cue_id": hit.cue_id, "severity": hit.severity,
                "seq": hit.evidence.seq})

    async def _write_alerts(self, event: Any, call_id: str, hits: list[AlertHit], generation: int) -> bool:
        """Store the call's pending alerts in ``call_alerts`` (an upsert per (call, cue): exactly
        once however often this runs), then drop them from the table entry. Alerts of the call
        raised while these were being written (no second write starts while one runs) are this
        write's too: it goes on until the entry has none pending."""
        try:
            while True:
                try:
                    for hit in hits:
                        await self._retrying("write_alert", call_id, generation,
                                             lambda h=hit: self.services.postgres.write_alert(h))
                except _Revoked:
                    return False
                except Exception as exc:  # SinkRejected or a bug: logged and counted; the alert was published
                    ERRORS.labels("write_alert").inc()
                    log.error("alert could not be stored", extra={
                        "stage": STAGE, "call_id": call_id, "error": safe_error(exc)})
                if generation != self._generation:
                    return False
                entry = self.calls.get(call_id)
                if entry is None or not entry.get("pending_alerts"):
                    return True
                done = {h.cue_id for h in hits}
                pending = [d for d in entry["pending_alerts"] if d["cue_id"] not in done]
                entry["pending_alerts"] = pending
                with in_partition_of(event):
                    self.calls[call_id] = entry
                if not pending:
                    return True
                hits = [hit_from_dict(d) for d in pending]
        finally:
            if self._writing_alerts.get(call_id) == generation:
                del self._writing_alerts[call_id]

    # -- end of call -------------------------------------------------------------------------------------

    async def _finish(self, event: Any, call_id: str, cu: CallUnderstanding, generation: int) -> bool:
        t0 = time.perf_counter()
        status = DONE
        try:
            try:
                result = await self._retrying("finish", call_id, generation, lambda: finish_call(cu, self.services))
            except _Revoked:
                return False
            except Exception as exc:
                status, result = FAILED, None
                CALLS.labels("failed").inc()
                log.error("call analysis failed for good (replay the call once fixed)", extra={
                    "stage": STAGE, "call_id": call_id, "error": safe_error(exc)})
            if result is not None:
                FINISH_SECONDS.observe(time.perf_counter() - t0)
                value = analysis_event(call_id, result, processed_at_us=_now_us()).SerializeToString()
                try:
                    await faust_kit.deliver(lambda: faust_kit.publish(self.analysis, call_id.encode(), value),
                                            stage=STAGE, what="call_analysis", call_id=call_id,
                                            stopped=self._stopped(generation))
                except faust_kit.Abandoned:
                    return False
                CALLS.labels("analysed").inc()
                log.info("call analysed and stored", extra={
                    "stage": STAGE, "call_id": call_id, "utterances": result.utterances,
                    "topics": list(result.analysis.topics), "emotion": result.analysis.emotion_primary,
                    "facts": len(result.analysis.facts), "weaviate_id": result.weaviate_id,
                    "analyzer": result.analysis.analyzer, "postgres": result.postgres.call_row})
            if generation != self._generation:
                return False
            entry = self.calls.get(call_id)
            if entry is not None and entry["status"] == OPEN:
                # the tombstone keeps the metadata, not the transcript (that is in Postgres now)
                meta = dict(entry["cu"], conversation=None)
                entry.update(status=status, done_at=time.time(), cu=meta)
                with in_partition_of(event):
                    self.calls[call_id] = entry
            return True
        finally:
            if self._finishing.get(call_id) == generation:
                del self._finishing[call_id]

    # -- plumbing ----------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        IN_PROGRESS.set(len(self._tasks))

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            IN_PROGRESS.set(len(self._tasks))

        task.add_done_callback(done)
        return task

    async def _retrying(self, work: str, call_id: str, generation: int, fn: Any) -> Any:
        """``fn()`` in the thread pool; after :class:`SinkUnavailable` wait (doubling) and again,
        until it succeeds, fails for good, or the partition is revoked (:class:`_Revoked`)."""
        loop = asyncio.get_running_loop()
        policy = RetryPolicy(max_attempts=None, max_elapsed_s=None,
                             initial_delay_s=self.settings.understanding_retry_initial_seconds,
                             max_delay_s=self.settings.understanding_retry_max_seconds, jitter=0.2)
        rounds = 0
        while True:
            if generation != self._generation:
                raise _Revoked()
            try:
                return await loop.run_in_executor(self.executor, fn)
            except (SinkUnavailable, Stopped) as exc:
                if self.stop.is_set() or generation != self._generation:
                    raise _Revoked() from exc
                rounds += 1
                delay = policy.delay(rounds)
                STORE_RETRIES.labels(work).inc()
                log.warning("store unavailable; trying again later (other calls go on)", extra={
                    "stage": STAGE, "call_id": call_id, "work": work, "retry_in_s": round(delay, 2),
                    "error": safe_error(exc)})
                await asyncio.sleep(delay)

    def _purge(self, partition: int) -> None:
        """Now and then drop the tombstones of this partition older than the retention."""
        now = time.time()
        if now - self._purged_at.get(partition, 0.0) < 60.0:
            return
        self._purged_at[partition] = now
        retention = self.settings.understanding_state_retention_seconds
        for key, value in list(self.calls.items()):
            if value.get("partition") == partition and value.get("done_at") and now - value["done_at"] >= retention:
                del self.calls[key]

    async def _on_partitions_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Held records are redelivered to the partitions' new owners; work in progress stops at
        # its next check and acknowledges nothing.
        self._generation += 1
        self._finishing.clear()
        self._writing_alerts.clear()

    async def _on_before_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """SIGTERM: give running work a moment (bounded), then stop retries and the pool."""
        tasks = list(self._tasks)
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=self.drain_seconds)
        self.stop.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.services.close()
