"""The ``recorder`` agent: audio.chunks + call.lifecycle → stereo WAV in S3 + Postgres row.

Stage graph (one Faust app, one agent, one timer)::

    audio.chunks ─┐
    call.lifecycle├─▶ recorder agent ── tables: recorder_calls (CallState per call)
    control ──────┘        │                    recorder_chunks ("call_id:leg:seq" → AudioChunk bytes)
         ▲                 └─▶ thread pool: record_call() = mux → S3 legal + active → Postgres
         └── timer (due calls: grace, idle, orphan, retry, purge) and finished finalisations

Every table write happens while the agent processes a record of the call's own partition
(Faust writes a table change to the changelog partition of the current record), which is why
timers and finished uploads do not touch the tables themselves: they send a command, keyed by
the call and addressed to the call's partition, on the internal control topic, and the agent
applies it. The decisions (when a call is due, what a duplicate is) are the pure functions of
:mod:`stream_processor.callstate`; the blocking work is :func:`.core.record_call` in a thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from faust.types import TP

from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
from lupita.v1 import events_pb2

from stream_processor import callstate as cs
from stream_processor import faust_kit
from stream_processor.errors import safe_error
from stream_processor import records
from stream_processor.metrics import Probes
from stream_processor.stages.recorder import metrics as m
from stream_processor.stores.archive import Archive
from stream_processor.stores.calls_db import CallStore
from stream_processor.stages.recorder.core import RecordingRules, record_call
from stream_processor.stages.recorder.settings import RecorderSettings
from stream_processor.records import LEG_NAMES

log = logging.getLogger(__name__)

DEAD_LETTERS = "stream-processor.recorder-dead-letters"
# Internal topic (keyed by call_id, same partition count as the sources) on which the recorder
# sends itself "check", "done" and "failed" commands, so every table write happens while
# processing a record of the call's own partition.
RECORDER_CONTROL = "stream-processor.recorder-control"
TOPICS = (AUDIO_CHUNKS, CALL_LIFECYCLE, RECORDER_CONTROL, DEAD_LETTERS)  # read and written
CALLS_TABLE = "recorder_calls"
CHUNKS_TABLE = "recorder_chunks"
TABLES = (CALLS_TABLE, CHUNKS_TABLE)  # changelog-backed

CMD_CHECK = "check"  # re-evaluate the call (timers: due, retry, purge)
CMD_DONE = "done"  # a finalisation succeeded: remember the outcome, drop the chunks
CMD_FAILED = "failed"  # a finalisation failed: back off, the timer retries


def chunk_key(call_id: str, leg: int, seq: int) -> str:
    return f"{call_id}:{LEG_NAMES[leg]}:{seq}"


class Recorder:
    """The recorder stage wired into the worker's Faust app."""

    def __init__(
        self,
        settings: RecorderSettings,
        *,
        app: faust.App,
        archive: Archive,
        store: CallStore,
        probes: Probes | None = None,
        worker_name: str = "",
        drain_seconds: float = 20.0,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.store = store
        self.probes = probes or Probes()
        self.app = app
        self.worker_name = worker_name  # in each call's metadata: which worker recorded it
        self.drain_seconds = drain_seconds
        self.rules = RecordingRules(
            max_call_seconds=settings.recorder_max_call_seconds,
            align_tolerance_ms=settings.recorder_align_tolerance_ms,
        )
        self.alive_since = time.time()
        self.executor = ThreadPoolExecutor(settings.recorder_threads, thread_name_prefix="recorder")
        self._running: dict[str, asyncio.Future] = {}
        self._commanded: dict[str, float] = {}
        # consumer progress: last offset processed per source partition, and the partitions
        # (numbers) on which records are still unread (recomputed by the timer)
        self._processed: dict[TP, int] = {}
        self._backlog: set[int] = set()

        self.chunks_topic = settings.topic(AUDIO_CHUNKS)
        self.lifecycle_topic = settings.topic(CALL_LIFECYCLE)
        self.control_topic = settings.topic(RECORDER_CONTROL)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = self.app.topic(self.chunks_topic, self.lifecycle_topic, self.control_topic, **raw)
        self.control = self.app.topic(self.control_topic, **raw)
        self.dead_letters = self.app.topic(settings.topic(DEAD_LETTERS), **raw)
        # keys: JSON strings; recorder_calls values: JSON dicts (CallState.to_dict);
        # recorder_chunks values: the AudioChunk record bytes exactly as consumed.
        self.calls = self.app.Table(CALLS_TABLE, key_type=str, partitions=settings.topic_partitions)
        self.chunks = faust_kit.raw_table(self.app, CHUNKS_TABLE, settings.topic_partitions)
        self.app.agent(self.source, name="recorder")(self._agent)
        faust_kit.timer(self.app, settings.recorder_tick_seconds, name="recorder_timer", stage="recorder",
                        probes=self.probes, check=self._check_calls)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self.app.on_before_shutdown.connect(self._on_before_shutdown)

    # -- the agent ---------------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> Any:
        async for event in stream.noack().events():
            msg = event.message
            self._processed[msg.tp] = msg.offset

            async def apply() -> str | None:
                return self.handle(msg.topic, msg.partition, event.key, event.value, time.time())

            try:
                # a broker error (a table write before the changelog's metadata is known) is
                # retried, the record applied again; never dead-lettered
                dead = await faust_kit.deliver(apply, stage="recorder", what="record",
                                               stopped=lambda: msg.tp not in self.app.assignor.assigned_actives())
            except faust_kit.Abandoned:
                continue  # revoked: not acknowledged, the new owner redoes it
            except Exception as exc:  # a bug must not stop the recordings of every other call
                m.BAD_RECORDS.labels("error").inc()
                log.exception(
                    "record could not be processed",
                    extra={"stage": "recorder", "topic": msg.topic, "partition": msg.partition,
                           "offset": msg.offset, "error": type(exc).__name__},
                )
                dead = "error"
            if dead is not None:
                await faust_kit.dead_letter(self.dead_letters, msg, event.key, event.value, dead, stage="recorder")
            # acknowledged once its table changes are on the broker (the agent does not wait)
            faust_kit.acknowledge(event, stage="recorder")

    def handle(self, topic: str, partition: int, key: bytes | None, value: bytes | None, now: float) -> str | None:
        """Apply one record; returns a reason if the record goes to the dead-letter topic."""
        m.RECORDS.labels(_logical(topic, self)).inc()
        try:
            if topic == self.chunks_topic:
                self._on_chunk(records.parse_chunk(key, value), value or b"", partition, now)
            elif topic == self.lifecycle_topic:
                self._on_lifecycle(records.parse_lifecycle(key, value), partition, now)
            elif topic == self.control_topic:
                self._on_control(key, value, now)
            else:  # pragma: no cover - the channel has only these topics
                raise records.BadRecord(f"unexpected topic {topic}")
        except records.BadRecord as exc:
            m.BAD_RECORDS.labels(exc.reason).inc()
            log.warning(
                "bad record skipped",
                extra={"stage": "recorder", "topic": topic, "partition": partition,
                       "reason": exc.reason, "error": str(exc)},
            )
            return exc.reason
        return None

    # -- per record ----------------------------------------------------------------------------------

    def _load(self, call_id: str) -> cs.CallState | None:
        raw = self.calls.get(call_id)
        return None if raw is None else cs.CallState.from_dict(raw)

    def _save(self, state: cs.CallState) -> None:
        self.calls[state.call_id] = state.to_dict()

    def _load_or_new(self, call_id: str, partition: int, now: float) -> cs.CallState:
        state = self._load(call_id)
        if state is None:
            state = cs.new_state(call_id, now)
        if state.partition is None:
            state.partition = partition
        return state

    def _on_chunk(self, chunk: events_pb2.AudioChunk, value: bytes, partition: int, now: float) -> None:
        state = self._load_or_new(chunk.call_id, partition, now)
        if state.status != cs.OPEN:  # a redelivery, or audio after the grace period: nothing to do
            m.BAD_RECORDS.labels("late").inc()
            log.info(
                "chunk after the call was finalised ignored",
                extra={"stage": "recorder", "call_id": chunk.call_id, "status": state.status,
                       "leg": LEG_NAMES[chunk.leg], "chunk_seq": chunk.chunk_seq},
            )
            return
        before = state.duplicates
        if cs.apply_chunk(state, chunk, now):
            self.chunks[chunk_key(chunk.call_id, chunk.leg, chunk.chunk_seq)] = value
            m.CHUNKS.labels(LEG_NAMES[chunk.leg]).inc()
            if state.duplicates > before:
                m.DUPLICATE_CHUNKS.inc()
        self._save(state)
        self._maybe_finalize(state, now)

    def _on_lifecycle(self, event: events_pb2.CallLifecycle, partition: int, now: float) -> None:
        state = self._load_or_new(event.call_id, partition, now)
        kind = event.WhichOneof("event")
        if state.status != cs.OPEN:
            log.info("lifecycle event after the call was finalised ignored",
                     extra={"stage": "recorder", "call_id": state.call_id, "event": kind, "status": state.status})
            return
        if kind == "started":
            if cs.apply_started(state, event.started, now):
                dropped = self._drop_chunks(state)
                state.dropped_no_consent += dropped
                state.received = {"lupita": [], "person": []}
            log.info(
                "call started",
                extra={"stage": "recorder", "call_id": state.call_id,
                       "recording_consent": state.consent, "status": state.status},
            )
        else:
            cs.apply_ended(state, event.ended, now)
            log.info(
                "call ended",
                extra={"stage": "recorder", "call_id": state.call_id, "status": state.status,
                       "expected_chunks": state.expected_chunks()},
            )
        self._save(state)
        self._maybe_finalize(state, now)

    def _on_control(self, key: bytes | None, value: bytes | None, now: float) -> None:
        cmd = faust_kit.parse_command(key, value, allowed=(CMD_CHECK, CMD_DONE, CMD_FAILED), stage="recorder")
        call_id, kind = cmd["call_id"], cmd["cmd"]
        state = self._load(call_id)
        if state is None:
            return
        if kind == CMD_CHECK:
            if state.status == cs.OPEN:
                self._maybe_finalize(state, now)
            elif cs.retry_due(state, now, running=call_id in self._running,
                              retry_seconds=self.settings.recorder_retry_seconds,
                              alive_since=self.alive_since):
                log.info("finalisation retried", extra={"stage": "finalize", "call_id": call_id,
                                                        "attempts": state.attempts})
                self._spawn(state)
            elif cs.purge_due(state, now, self.settings.recorder_state_retention_seconds):
                self._drop_chunks(state)
                del self.calls[call_id]
                self._commanded.pop(call_id, None)
                m.PURGED.inc()
                log.info("call state purged", extra={"stage": "recorder", "call_id": call_id,
                                                     "status": state.status})
        elif kind == CMD_DONE and state.status == cs.FINALIZING:
            outcome = cmd.get("outcome") or {}
            self._drop_chunks(state)
            cs.mark_done(state, outcome, now)
            self._save(state)
        elif kind == CMD_FAILED and state.status == cs.FINALIZING:
            cs.mark_failed(state, now)
            self._save(state)

    # -- finalisation --------------------------------------------------------------------------------

    def _due(self, state: cs.CallState, now: float) -> str | None:
        s = self.settings
        return cs.due_reason(
            state, now, grace_seconds=s.recorder_grace_seconds, idle_seconds=s.recorder_idle_seconds,
            orphan_seconds=s.recorder_orphan_seconds,
            # a call waits its full time again after a restart or a broker outage
            alive_since=max(self.alive_since, faust_kit.broker_watch(self.app).since),
            backlog=state.partition in self._backlog,
        )

    def _maybe_finalize(self, state: cs.CallState, now: float) -> None:
        reason = self._due(state, now)
        if reason is None:
            return
        if reason == cs.REASON_NO_START:
            dropped = self._drop_chunks(state)
            m.BAD_RECORDS.labels("unknown_call").inc(max(dropped, 1))
            m.CALLS.labels(cs.SKIPPED).inc()
            log.warning(
                "records of an unknown call dropped: no started event arrived, so there is no consent",
                extra={"stage": "recorder", "call_id": state.call_id, "dropped_chunks": dropped,
                       "ended_seen": state.ended is not None},
            )
            cs.mark_done(state, {"recording_status": cs.SKIPPED, "reason": cs.REASON_NO_START,
                                 "dropped_chunks": dropped}, now)
            self._save(state)
            return
        cs.start_finalizing(state, reason, now)
        self._save(state)
        log.info("finalising call", extra={"stage": "finalize", "call_id": state.call_id, "reason": reason,
                                           "missing": {k: v for k, v in state.missing().items() if v}})
        self._spawn(state)

    def _drop_chunks(self, state: cs.CallState) -> int:
        n = 0
        for leg, seqs in state.chunk_seqs().items():
            for seq in seqs:
                key = chunk_key(state.call_id, leg, seq)
                if key in self.chunks:
                    del self.chunks[key]
                    n += 1
        return n

    def _spawn(self, state: cs.CallState) -> None:
        chunks: list[events_pb2.AudioChunk] = []
        for leg, seqs in state.chunk_seqs().items():
            for seq in seqs:
                raw = self.chunks.get(chunk_key(state.call_id, leg, seq))
                if raw is None:
                    continue
                chunk = events_pb2.AudioChunk()
                chunk.ParseFromString(raw)
                chunks.append(chunk)
        snapshot = cs.CallState.from_dict(json.loads(json.dumps(state.to_dict())))
        self._running[state.call_id] = asyncio.ensure_future(self._finalize(snapshot, chunks))

    async def _finalize(self, state: cs.CallState, chunks: list[events_pb2.AudioChunk]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        m.RUNNING.inc()
        try:
            work = functools.partial(
                record_call, state, chunks, archive=self.archive, store=self.store, rules=self.rules,
                worker=self.worker_name,
            )
            try:
                outcome = await loop.run_in_executor(self.executor, work)
            except Exception as exc:
                m.CALLS.labels("failed").inc()
                log.error(
                    "finalisation failed; it will be retried",
                    extra={"stage": "finalize", "call_id": state.call_id, "attempt": state.attempts + 1,
                           "error": safe_error(exc)},
                )
                await self._command(state, CMD_FAILED)
                return
            m.FINALIZE.observe(time.perf_counter() - t0)
            m.CALLS.labels(outcome["recording_status"]).inc()
            if outcome.get("audio_written") and outcome.get("audio_seconds"):
                m.AUDIO_SECONDS.inc(outcome["audio_seconds"])
            log.info("call archived", extra={"stage": "finalize", "call_id": state.call_id, **{
                k: outcome.get(k) for k in ("recording_status", "reason", "audio_key", "metadata_key",
                                            "version_id", "bytes", "already_archived", "rejected_chunks")}})
            await self._command(state, CMD_DONE, outcome=outcome)
        except Exception as exc:  # the control topic is unreachable: the timer retries later
            log.error("could not report a finalisation",
                      extra={"stage": "finalize", "call_id": state.call_id, "error": repr(exc)[:300]})
        finally:
            m.RUNNING.dec()
            self._running.pop(state.call_id, None)

    async def _command(self, state: cs.CallState, cmd: str, **extra: Any) -> None:
        await faust_kit.send_command(self.control, state.call_id, state.partition, cmd, **extra)

    # -- timer, rebalance, shutdown -------------------------------------------------------------------

    async def _check_calls(self) -> None:
        """The timer: ask the agent to re-check calls that are due (grace, idle, orphan, retry, purge)."""
        now = time.time()
        assigned = set(self.app.assignor.assigned_actives())
        self._backlog = await faust_kit.backlog_partitions(
            self.app, self._processed, assigned, (self.chunks_topic, self.lifecycle_topic))
        actives = {tp.partition for tp in assigned if tp.topic == self.chunks_topic}
        open_calls = 0
        retention = self.settings.recorder_state_retention_seconds
        for call_id, raw in list(self.calls.items()):
            state = cs.CallState.from_dict(raw)
            if state.partition not in actives:
                continue  # a standby copy: its active owner decides
            open_calls += state.status == cs.OPEN
            due = (
                self._due(state, now) is not None
                or cs.retry_due(state, now, running=call_id in self._running,
                                retry_seconds=self.settings.recorder_retry_seconds,
                                alive_since=self.alive_since)
                or cs.purge_due(state, now, retention)
            )
            if due and now - self._commanded.get(call_id, 0.0) >= 2 * self.settings.recorder_tick_seconds:
                self._commanded[call_id] = now
                await self._command(state, CMD_CHECK)
        m.OPEN_CALLS.set(open_calls)
        if len(self._commanded) > 10_000:
            self._commanded = {k: v for k, v in self._commanded.items() if now - v < 60}

    async def _on_partitions_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        self._processed.clear()
        self._backlog = set()

    async def _on_before_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """SIGTERM: let running finalisations finish (bounded) so they report before we leave."""
        running = list(self._running.values())
        if running:
            log.info("waiting for running finalisations", extra={"stage": "shutdown", "running": len(running)})
            await asyncio.wait(running, timeout=self.drain_seconds)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _logical(topic: str, rec: Recorder) -> str:
    if topic == rec.chunks_topic:
        return AUDIO_CHUNKS
    if topic == rec.lifecycle_topic:
        return CALL_LIFECYCLE
    return RECORDER_CONTROL
