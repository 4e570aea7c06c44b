"""The ``vad`` stage's thin Faust wrapper: audio.chunks + call.lifecycle → speech.segments.

:class:`VadAgent` takes up to ``vad_batch_max_records`` records within ``vad_batch_within_ms``,
applies them to the pure :class:`~.core.VadCore`, runs the batched drain in a thread, publishes
the segments, waits until the producer has delivered them, and only then writes the calls'
state to the changelog-backed tables ``vad_calls`` (call id → JSON) and ``vad_audio``
(``call_id:leg:chunk_seq`` → PCM16 bytes). A worker killed at any point therefore resumes from a
state whose segments are all on Kafka: the replayed chunks (``chunk_seq`` at or below the leg's
last one) are skipped, and anything re-done after the last state write produces the same
records again (deterministic ``(call_id, leg, seq, kind, revision)``; consumers dedupe).

Every table write happens in the partition context of a record of the call's own partition
(:func:`stream_processor.faust_kit.in_partition_of`); the timer asks for due calls (grace after
the ended event, idle calls, orphans, purges) by sending a command on the internal topic
``stream-processor.vad-control`` to the call's partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, SPEECH_SEGMENTS

from stream_processor import callstate as cs
from stream_processor import faust_kit, records
from stream_processor.faust_kit import in_partition_of
from stream_processor.models.vad import SileroModel
from stream_processor.records import KIND_FINAL, KIND_NAMES, LEG_NAMES
from stream_processor.stages.vad.core import SegmentOut, VadCore, due_reason
from stream_processor.stages.vad.settings import VadStageSettings
from stream_processor.stages.vad.metrics import (
    BAD_RECORDS, BATCH_SECONDS, BATCH_STREAMS, OPEN_CALLS, RECORDS, SEGMENTS, SKIPPED_CHUNKS, UNREADABLE_STATES,
)

log = logging.getLogger(__name__)

VAD_CONTROL = "stream-processor.vad-control"
VAD_DEAD_LETTERS = "stream-processor.vad-dead-letters"
TOPICS = (AUDIO_CHUNKS, CALL_LIFECYCLE, VAD_CONTROL, VAD_DEAD_LETTERS, SPEECH_SEGMENTS)  # read and written
CALLS_TABLE = "vad_calls"
AUDIO_TABLE = "vad_audio"
TABLES = (CALLS_TABLE, AUDIO_TABLE)  # changelog-backed


class VadAgent:
    """The vad stage wired into a Faust app (shared with the other stages of the worker)."""

    def __init__(self, settings: VadStageSettings, *, app: Any, probes: Any = None,
                 model: SileroModel | None = None) -> None:
        self.settings = settings
        self.app = app
        self.probes = probes
        self.core = VadCore(model or SileroModel(intra_op_num_threads=settings.vad_threads),
                            settings)
        self.alive_since = time.time()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="vad")
        self._generation = 0
        self._cleared_for = 0
        self._processed: dict[Any, int] = {}
        self._backlog: set[int] = set()
        self._commanded: dict[str, float] = {}
        self._bad_states: list[tuple[Any, str, bytes]] = []  # (record, call id, state) to dead-letter
        self._unreadable_seen: set[str] = set()  # call ids whose unreadable state the timer reported

        self.chunks_topic = settings.topic(AUDIO_CHUNKS)
        self.lifecycle_topic = settings.topic(CALL_LIFECYCLE)
        self.control_topic = settings.topic(VAD_CONTROL)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = app.topic(self.chunks_topic, self.lifecycle_topic, self.control_topic, **raw)
        self.control = app.topic(self.control_topic, **raw)
        self.segments = app.topic(settings.topic(SPEECH_SEGMENTS), **raw)
        self.dead_letters = app.topic(settings.topic(VAD_DEAD_LETTERS), **raw)
        self.calls = app.Table(CALLS_TABLE, key_type=str, partitions=settings.topic_partitions)
        self.audio = faust_kit.raw_table(app, AUDIO_TABLE, settings.topic_partitions)
        app.agent(self.source, name="vad")(self._agent)
        faust_kit.timer(app, settings.vad_tick_seconds, name="vad_timer", stage="vad", probes=probes,
                        check=self._check_calls)
        app.on_partitions_revoked.connect(self._on_partitions_revoked)

    # -- the agent ------------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> Any:
        s = self.settings
        async for events in stream.take_events(s.vad_batch_max_records, s.vad_batch_within_ms / 1000.0):
            # take_events acknowledges the batch once this body returns: a broker error is
            # therefore retried here (the calls reloaded from their last state and the batch
            # applied again: what it already published comes out the same), never acknowledged
            generation = self._generation
            try:
                await faust_kit.deliver(lambda: self._batch_or_forget(events), stage="vad", what="batch",
                                        stopped=lambda: generation != self._generation)
            except faust_kit.Abandoned:
                continue  # revoked: the new owner redoes the batch
            except Exception as exc:  # a bug must not stop every other call's segmentation
                BAD_RECORDS.labels("error").inc(len(events))
                log.exception("vad batch failed; its records are dead-lettered and its calls reloaded "
                              "from their last state", extra={"stage": "vad", "records": len(events),
                                                              "error": type(exc).__name__})
                for ev in events:
                    await faust_kit.dead_letter(self.dead_letters, ev.message, ev.key, ev.value, "error",
                                                stage="vad")

    async def _batch_or_forget(self, events: list[Any]) -> None:
        try:
            await self._batch(events)
        except Exception:
            for ev in events:  # what is in memory may be half-applied: the tables are the truth
                with contextlib.suppress(Exception):
                    self.core.forget(ev.key.decode())
            raise

    async def _batch(self, events: list[Any]) -> None:
        t0 = time.perf_counter()
        generation = self._generation
        if self._cleared_for != generation:
            # Partitions were revoked since the last batch: what is in memory may be stale, the
            # tables are the truth. Only the agent touches the core, so this is the place.
            self.core.clear()
            self._cleared_for = generation
        app_generation = self.app.consumer_generation_id
        now = time.time()
        touched: dict[str, Any] = {}  # call id -> a record of the call's partition
        for ev in events:
            msg = ev.message
            if msg.generation_id != app_generation:
                continue  # fetched before a rebalance: redelivered to the partition's owner
            self._processed[msg.tp] = msg.offset
            call_id, dead = self._apply(ev, now)
            if call_id is not None:
                touched[call_id] = ev
            if dead is not None:
                await faust_kit.dead_letter(self.dead_letters, msg, ev.key, ev.value, dead, stage="vad")
        bad_states, self._bad_states = self._bad_states, []
        for ev, call_id, value in bad_states:
            await faust_kit.dead_letter(self.dead_letters, ev.message, call_id.encode(), value,
                                        "unreadable_state", stage="vad")
        if not touched:
            return
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.executor, self._step_and_check, list(touched), now)
        BATCH_SECONDS.observe(time.perf_counter() - t0)
        if generation != self._generation:
            return  # partitions were revoked meanwhile: nothing of this batch is written
        try:
            await self._publish(outputs, generation)
        except faust_kit.Abandoned:
            return  # revoked while the broker was down: the new owner redoes the batch
        if generation != self._generation:
            return
        # Audio pieces first, then (once the segments and pieces are delivered) the state that
        # refers to them, then the deletions of pieces nothing refers to any more.
        exported = {cid: self.core.export_call(cid) for cid in touched}
        for cid, (_, new, _) in exported.items():
            with in_partition_of(touched[cid]):
                for key, pcm in new.items():
                    self.audio[key] = pcm
        stopped = lambda: generation != self._generation  # noqa: E731
        try:
            await faust_kit.changes_delivered(self.app, stage="vad", stopped=stopped)
        except faust_kit.Abandoned:
            return
        for cid, (value, _, gone) in exported.items():
            with in_partition_of(touched[cid]):
                if value is None:
                    self.calls.pop(cid, None)
                else:
                    self.calls[cid] = value
                for key in gone:
                    self.audio.pop(key, None)
            if value is not None and value["call"]["status"] != cs.OPEN:
                self._drop_finished(cid)
        # take_events acknowledges the batch when this returns: its state must be on the broker
        with contextlib.suppress(faust_kit.Abandoned):
            await faust_kit.changes_delivered(self.app, stage="vad", stopped=stopped)
        OPEN_CALLS.set(sum(1 for c in self.core.calls.values() if c.state.status == cs.OPEN))

    def _apply(self, ev: Any, now: float) -> tuple[str | None, str | None]:
        """One record into the core: ``(call id touched or None, dead-letter reason or None)``."""
        msg = ev.message
        topic, key, value = msg.topic, ev.key, ev.value
        RECORDS.labels(_logical(topic, self)).inc()
        call_id = None
        try:
            if topic == self.chunks_topic:
                chunk = records.parse_chunk(key, value)
                call_id = chunk.call_id
                self._ensure_loaded(call_id, ev)
                skipped = self.core.on_chunk(chunk, value or b"", msg.partition, now)
                if skipped is not None:
                    SKIPPED_CHUNKS.labels(skipped).inc()
            elif topic == self.lifecycle_topic:
                event = records.parse_lifecycle(key, value)
                call_id = event.call_id
                self._ensure_loaded(call_id, ev)
                self.core.on_lifecycle(event, msg.partition, now)
            else:
                call_id = faust_kit.parse_command(key, value, allowed=("check",), stage="vad")["call_id"]
                self._ensure_loaded(call_id, ev)
                if not self.core.has(call_id):
                    return None, None  # already purged
        except records.BadRecord as exc:
            BAD_RECORDS.labels(exc.reason).inc()
            log.warning("bad record skipped", extra={
                "stage": "vad", "topic": topic, "partition": msg.partition, "offset": msg.offset,
                "reason": exc.reason, "error": str(exc), **({"call_id": call_id} if call_id else {})})
            # a valid call whose record was refused (e.g. beyond the length limit) still counts
            # as touched: its bookkeeping (last_seen, received) moved on
            return (call_id if call_id is not None and self.core.has(call_id) else None), exc.reason
        except Exception as exc:  # a bug: this record is dead-lettered, the batch's others go on
            BAD_RECORDS.labels("error").inc()
            log.exception("record could not be processed; dead-lettered", extra={
                "stage": "vad", "topic": topic, "partition": msg.partition, "offset": msg.offset,
                **({"call_id": call_id} if call_id else {}), "error": type(exc).__name__})
            return (call_id if call_id is not None and self.core.has(call_id) else None), "error"
        return call_id, None

    def _ensure_loaded(self, call_id: str, ev: Any) -> None:
        """Bring the call's table state into the core. A state that cannot be read (corrupt, or
        written by an incompatible version) is never skipped silently: it is logged, counted,
        put on the dead-letter topic (reason ``unreadable_state``) and removed, and the call
        goes on from a fresh state (its derived data then needs ``lupita replay CALL_ID``)."""
        if self.core.has(call_id):
            return
        value = self.calls.get(call_id)
        if value is None:
            return
        try:
            self.core.load(call_id, value, self.audio.get)
        except Exception as exc:
            self.core.forget(call_id)
            UNREADABLE_STATES.inc()
            log.error("vad call state unreadable: dead-lettered and started afresh (replay the call)", extra={
                "stage": "vad", "call_id": call_id, "error": f"{type(exc).__name__}: {exc}"[:300]})
            self._bad_states.append((ev, call_id, json.dumps(value, default=str).encode()))
            with in_partition_of(ev):
                self.calls.pop(call_id, None)
            return
        legs = value["legs"]
        log.info("vad call state loaded from the table", extra={
            "stage": "vad", "call_id": call_id, "status": value["call"]["status"],
            "last_chunk_seq": {name: leg["last_seq"] for name, leg in legs.items()},
            "cursor_s": {name: round(leg["cursor"] / (self.core.calls[call_id].rate or 8000), 3)
                         for name, leg in legs.items()},
            "at": f"{ev.message.topic}/{ev.message.partition}/{ev.message.offset}"})

    def _step_and_check(self, call_ids: list[str], now: float) -> list[SegmentOut]:
        """In the vad thread: the batched drain, then the calls that are due."""
        out = self.core.step(on_batch=BATCH_STREAMS.observe)
        backlog = self._backlog
        for cid in call_ids:
            call = self.core.calls.get(cid)
            if call is None:
                continue
            done = self.core.check(cid, now, alive_since=self._waiting_since(),
                                   backlog=call.state.partition in backlog)
            if done is not None:
                log.info("vad call state", extra={"stage": "vad", "call_id": cid, "action": done,
                                                  "segments": call.state.outcome and call.state.outcome.get("segments")})
        return out + self.core.take_outputs()

    async def _publish(self, outputs: list[SegmentOut], generation: int) -> None:
        """Deliver the segments; returns once the broker has every one of them (a broker error
        is retried: the batch's state is written only after this; raises
        :class:`faust_kit.Abandoned` if the partitions are revoked meanwhile)."""
        now_us = time.time_ns() // 1000
        values = [(out.call_id.encode(), out.to_proto(now_us).SerializeToString()) for out in outputs]

        async def attempt() -> None:
            futures = [await self.segments.send(key=key, value=value) for key, value in values]
            for fut in futures:
                await fut

        if values:
            await faust_kit.deliver(attempt, stage="vad", what="segments",
                                    stopped=lambda: generation != self._generation)
        for out in outputs:
            SEGMENTS.labels(KIND_NAMES[out.kind], LEG_NAMES[out.leg]).inc()
            if out.kind == KIND_FINAL:
                log.info("speech segment", extra={
                    "stage": "vad", "call_id": out.call_id, "leg": LEG_NAMES[out.leg], "seq": out.seq,
                    "start_s": round(out.start / out.sample_rate, 3), "end_s": round(out.end / out.sample_rate, 3)})

    def _waiting_since(self) -> float:
        """A call's idle clock starts no earlier than this worker's start or the end of the last
        broker outage it saw."""
        return max(self.alive_since, faust_kit.broker_watch(self.app).since)

    def _drop_finished(self, call_id: str) -> None:
        """A finished call keeps only its tombstone (in the table); memory is freed."""
        self.core.forget(call_id)

    # -- timer, rebalance ----------------------------------------------------------------------------

    async def _check_calls(self) -> None:
        now = time.time()
        assigned = set(self.app.assignor.assigned_actives())
        self._backlog = await faust_kit.backlog_partitions(
            self.app, self._processed, assigned, (self.chunks_topic, self.lifecycle_topic))
        actives = {tp.partition for tp in assigned if tp.topic == self.chunks_topic}
        tick = self.settings.vad_tick_seconds
        for call_id, value in list(self.calls.items()):
            try:
                state = cs.CallState.from_dict(value["call"])
            except Exception as exc:
                # never skipped silently: said once, counted, and the call's partition (the key's
                # hash, as the bridge partitions) is asked to load it, which dead-letters it
                if call_id not in self._unreadable_seen:
                    self._unreadable_seen.add(call_id)
                    UNREADABLE_STATES.inc()
                    log.error("vad call state unreadable in the table; its partition is asked to handle it",
                              extra={"stage": "vad", "call_id": call_id,
                                     "error": f"{type(exc).__name__}: {exc}"[:300]})
                    await faust_kit.send_command(self.control, call_id, None, "check")
                continue
            if state.partition not in actives:
                continue
            due = (cs.purge_due(state, now, self.settings.vad_state_retention_seconds)
                   or due_reason(state, now, self.settings, alive_since=self._waiting_since(),
                                 backlog=state.partition in self._backlog) is not None)
            if due and now - self._commanded.get(call_id, 0.0) >= 2 * tick:
                self._commanded[call_id] = now
                await faust_kit.send_command(self.control, call_id, state.partition, "check")
        if len(self._commanded) > 10_000:
            self._commanded = {k: v for k, v in self._commanded.items() if now - v < 60}

    async def _on_partitions_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        """Everything in memory may be stale after a rebalance: the tables are the truth."""
        self._generation += 1
        self._processed.clear()
        self._backlog = set()
        # The core is cleared by the agent before its next batch (see _batch): a batch still
        # running sees the generation change and writes nothing.


def _logical(topic: str, agent: VadAgent) -> str:
    if topic == agent.chunks_topic:
        return AUDIO_CHUNKS
    if topic == agent.lifecycle_topic:
        return CALL_LIFECYCLE
    return VAD_CONTROL
