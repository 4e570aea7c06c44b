"""The media-bridge gRPC server (grpc.aio): one :class:`CallSession` per StreamCall stream.

Per stream, three small tasks cooperate on one event loop:

* the reader moves client messages into the session's inbox (a message whose bytes did not
  parse arrives there as the Violation :func:`parse_client_message` made of it);
* the session (the RPC handler itself) checks each message against :class:`CallProtocol`,
  re-chunks frames with one :class:`LegChunker` per leg and submits closed chunks to the
  call's :class:`CallPipeline`; it flushes partial chunks when no frame came for
  ``max_linger_ms``;
* the pipeline publishes chunks in order and, as Kafka acknowledges them, writes cumulative
  Acks and returns the frames' credits (FlowControl). When Kafka is slow the credits stall, so
  the client waits and a call never holds more than ``initial_credits`` frames in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from lupita.privacy import phone_hash, redact
from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, ensure_topics
from lupita.v1 import audio_pb2, events_pb2, media_bridge_pb2, media_bridge_pb2_grpc

from . import metrics
from .chunker import LegChunker
from .publisher import CallPipeline, KafkaPublisher, ended_event, now_us, started_event
from .settings import BridgeSettings
from .validation import LEGS, CallProtocol, CallRegistry, Violation, check_bearer, leg_name, parse_client_message

log = logging.getLogger("media_bridge")

SERVICE_NAME = media_bridge_pb2.DESCRIPTOR.services_by_name["MediaBridge"].full_name

# Out-of-band items in a session's inbox (besides ClientMessages).
_EOF = object()  # the client half-closed


class _ReadFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Shutdown:
    pass


class _KafkaFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class CallSession:
    """One StreamCall stream, from the first message to the final status."""

    def __init__(self, bridge: "Bridge", request_iterator, context: grpc.aio.ServicerContext) -> None:
        self.bridge = bridge
        self.settings = bridge.settings
        self.requests = request_iterator
        self.context = context
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.protocol = CallProtocol(
            max_frame_ms=self.settings.max_frame_ms, initial_credits=self.settings.initial_credits
        )
        self.call_id: str | None = None  # set once the call is admitted
        self.chunkers: dict[int, LegChunker] = {}
        self.pipeline: CallPipeline | None = None
        self.client_gone = False
        self.outcome = "rejected"
        self._finish_task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task | None = None
        self._log_extra: dict = {"stage": "bridge"}

    # ---- the handler -------------------------------------------------------------------

    async def run(self) -> None:
        self.bridge.sessions.add(self)
        try:
            await self._serve()
        except Violation as v:
            await self._refuse(v)
        except asyncio.CancelledError:
            # the client went away (or the server stopped): what was received still goes to
            # Kafka, and the call ends with reason "disconnect", in the background
            self.client_gone = True
            if self.call_id is not None and self._finish_task is None:
                self._finish("disconnect")
            raise
        finally:
            if self._reader is not None:
                self._reader.cancel()
            self.bridge.sessions.discard(self)
            if self.call_id is None:
                metrics.CALLS.labels(self.outcome).inc()
            self.bridge.session_closed.set()

    async def _serve(self) -> None:
        self._reader = asyncio.create_task(self._read())
        try:
            if self.bridge.draining:
                raise Violation(grpc.StatusCode.UNAVAILABLE, "shutdown", "bridge is shutting down; connect to another instance")
            if self.bridge.tokens is not None:
                check_bearer(self.context.invocation_metadata() or (), self.bridge.tokens)
        except Violation:
            # Let the client's first message (its CallStart) arrive before refusing: grpcio's
            # asyncio client reports INTERNAL instead of our status when its write races with
            # the server's end of the stream (grpc/grpc#36066). Bounded: one message, 1 s.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inbox.get(), 1.0)
            raise
        while True:
            item = await self._next()
            if item is None:  # linger timeout
                self._flush_partials()
                continue
            if isinstance(item, media_bridge_pb2.ClientMessage):
                kind = self.protocol.check(item)
                if kind == "frame":
                    self._on_frame(item.frame)
                elif kind == "start":
                    await self._on_start()
                else:
                    await self._on_end(item.end)
                    return
            elif isinstance(item, Violation):  # a message that did not parse (parse_client_message)
                raise item
            elif item is _EOF:
                if self.call_id is None:
                    raise Violation(
                        grpc.StatusCode.FAILED_PRECONDITION, "before_start", "stream closed before CallStart"
                    )
                await self._finish_and_wait("disconnect")
                raise Violation(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "no_end",
                    "stream half-closed before CallEnd; the call was ended with reason 'disconnect'",
                )
            elif isinstance(item, _ReadFailed):
                self.client_gone = True
                if self.call_id is not None:
                    await self._finish_and_wait("disconnect")
                return
            elif isinstance(item, _Shutdown):
                if self.call_id is not None:
                    await self._finish_and_wait("shutdown")
                raise Violation(grpc.StatusCode.UNAVAILABLE, "shutdown", "bridge is shutting down; the call was ended with reason 'shutdown'")
            elif isinstance(item, _KafkaFailed):
                raise self._kafka_violation(item.exc)

    async def _read(self) -> None:
        try:
            async for msg in self.requests:
                self.inbox.put_nowait(msg)
            self.inbox.put_nowait(_EOF)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.inbox.put_nowait(_ReadFailed(exc))

    async def _next(self):
        """The next inbox item; None when partial chunks waited ``max_linger_ms`` for a frame."""
        if self.inbox.empty() and any(c.pending_frames for c in self.chunkers.values()):
            try:
                return await asyncio.wait_for(self.inbox.get(), self.settings.max_linger_ms / 1000)
            except TimeoutError:
                return None
        return await self.inbox.get()

    def signal(self, item) -> None:
        """Deliver an out-of-band event (shutdown, Kafka failure) to the session loop."""
        self.inbox.put_nowait(item)

    # ---- messages ----------------------------------------------------------------------

    async def _on_start(self) -> None:
        start = self.protocol.start
        assert start is not None
        if self.bridge.draining:
            raise Violation(grpc.StatusCode.UNAVAILABLE, "shutdown", "bridge is shutting down; connect to another instance")
        self.bridge.registry.admit(start.call_id)  # ALREADY_EXISTS / RESOURCE_EXHAUSTED
        # from here on the call is live: every exit path goes through _do_finish or _unadmit
        self.call_id = start.call_id
        self._log_extra = {"stage": "bridge", "call_id": self.call_id}
        for leg in LEGS:
            self.chunkers[leg] = LegChunker(
                call_id=self.call_id,
                leg=leg,
                sample_rate_hz=start.sample_rate_hz,
                codec=start.codec,
                chunk_ms=self.settings.chunk_ms,
            )
        self.pipeline = CallPipeline(
            self.bridge.publisher,
            self.call_id,
            max_inflight=self.settings.max_inflight_chunks_per_call,
            on_acked=self._on_acked,
            on_failed=lambda exc: self.signal(_KafkaFailed(exc)),
        )
        self.bridge.calls[self.call_id] = self
        metrics.ACTIVE_CALLS.inc()
        self.outcome = "open"
        event = started_event(start, self.settings, received_at_us=now_us())
        try:
            await self.bridge.publisher.publish(
                self.bridge.publisher.lifecycle_topic, self.call_id, event.SerializeToString()
            )
        except Exception as exc:
            # nothing of this call reached Kafka: forget it (the client may retry the id)
            self._unadmit()
            metrics.ERRORS.labels("kafka").inc()
            raise self._kafka_violation(exc) from None
        log.info(
            "call started",
            extra={
                **self._log_extra,
                "person": redact(event.started.phone_hash),
                "sample_rate_hz": start.sample_rate_hz,
                "codec": audio_pb2.Codec.Name(start.codec),
                "consent": start.start.recording_consent,
            },
        )
        await self._write(
            media_bridge_pb2.ServerMessage(
                accepted=media_bridge_pb2.CallAccepted(
                    call_id=self.call_id, credits=self.settings.initial_credits, chunk_ms=self.settings.chunk_ms
                )
            )
        )

    def _unadmit(self) -> None:
        """Undo _on_start for a call whose started event never reached Kafka."""
        assert self.call_id is not None and self.pipeline is not None
        self.pipeline.cancel()
        metrics.ACTIVE_CALLS.dec()
        self.bridge.calls.pop(self.call_id, None)
        self.bridge.registry.release(self.call_id, remember=False)
        self.call_id = None
        self.outcome = "kafka_error"

    def _on_frame(self, frame: media_bridge_pb2.AudioFrame) -> None:
        leg = leg_name(frame.leg)
        metrics.FRAMES.labels(leg).inc()
        metrics.BYTES.labels(leg).inc(len(frame.payload))
        for chunk in self.chunkers[frame.leg].add(frame.seq, frame.capture_ts_us, frame.payload):
            self.pipeline.submit(chunk)

    async def _on_end(self, end: media_bridge_pb2.CallEnd) -> None:
        await self._finish_and_wait(end.reason or "completed", ended_at_us=end.ended_at_us)
        chunks = {leg: c.next_chunk_seq for leg, c in self.chunkers.items()}
        frames = {leg: c.frames_total for leg, c in self.chunkers.items()}
        await self._write(
            media_bridge_pb2.ServerMessage(
                closed=media_bridge_pb2.CallClosed(
                    call_id=self.call_id,
                    frames_lupita=frames[audio_pb2.LEG_LUPITA],
                    frames_person=frames[audio_pb2.LEG_PERSON],
                    chunks_lupita=chunks[audio_pb2.LEG_LUPITA],
                    chunks_person=chunks[audio_pb2.LEG_PERSON],
                )
            )
        )
        # CallEnd must be the last message: wait (briefly) for the half-close
        try:
            item = await asyncio.wait_for(self.inbox.get(), self.settings.close_grace_ms / 1000)
        except TimeoutError:
            return
        if isinstance(item, Violation):  # bytes that are not a ClientMessage
            raise item
        if isinstance(item, media_bridge_pb2.ClientMessage):
            self.protocol.check(item)  # raises FAILED_PRECONDITION (after end)

    def _flush_partials(self) -> None:
        for chunker in self.chunkers.values():
            chunk = chunker.flush()
            if chunk is not None:
                self.pipeline.submit(chunk)

    async def _on_acked(self, chunks: list[events_pb2.AudioChunk]) -> None:
        last: dict[int, int] = {}
        credits = 0
        for chunk in chunks:
            last[chunk.leg] = chunk.last_frame_seq
            credits += chunk.frame_count
            metrics.CHUNKS.labels(leg_name(chunk.leg)).inc()
        self.protocol.grant(credits)
        if self.client_gone:
            return
        for leg, seq in last.items():
            await self._write(media_bridge_pb2.ServerMessage(ack=media_bridge_pb2.Ack(leg=leg, seq=seq)))
        if self.protocol.state != CallProtocol.ENDED:
            await self._write(media_bridge_pb2.ServerMessage(flow=media_bridge_pb2.FlowControl(credits=credits)))

    # ---- the end of a call -------------------------------------------------------------

    def _finish(self, reason: str, ended_at_us: int = 0) -> asyncio.Task:
        """Start (once) the task that publishes what is left and then CallEnded."""
        if self._finish_task is None:
            self._finish_task = self.bridge.spawn(self._do_finish(reason, ended_at_us))
        return self._finish_task

    async def _finish_and_wait(self, reason: str, ended_at_us: int = 0) -> None:
        # shielded: a cancelled handler must not stop the call's last records
        try:
            await asyncio.shield(self._finish(reason, ended_at_us))
        except Exception as exc:  # logged and counted by _do_finish
            raise self._kafka_violation(exc) from None

    async def _do_finish(self, reason: str, ended_at_us: int) -> None:
        assert self.call_id is not None and self.pipeline is not None
        outcome = reason if reason in ("disconnect", "shutdown", "error") else "completed"
        try:
            self._flush_partials()
            await self.pipeline.close()
            event = ended_event(
                self.call_id,
                reason,
                ended_at_us=ended_at_us or now_us(),
                chunks={leg: c.next_chunk_seq for leg, c in self.chunkers.items()},
                frames={leg: c.frames_total for leg, c in self.chunkers.items()},
            )
            await self.bridge.publisher.publish(
                self.bridge.publisher.lifecycle_topic, self.call_id, event.SerializeToString()
            )
            log.info(
                "call ended",
                extra={
                    **self._log_extra,
                    "reason": reason,
                    "frames_lupita": event.ended.frames_lupita,
                    "frames_person": event.ended.frames_person,
                    "chunks_lupita": event.ended.chunks_lupita,
                    "chunks_person": event.ended.chunks_person,
                },
            )
        except Exception as exc:
            outcome = "kafka_error"
            metrics.ERRORS.labels("kafka").inc()
            log.error("call could not be published to Kafka", extra={**self._log_extra, "error": repr(exc)})
            raise
        finally:
            self.pipeline.cancel()
            self.outcome = outcome
            metrics.CALLS.labels(outcome).inc()
            metrics.ACTIVE_CALLS.dec()
            self.bridge.registry.release(self.call_id)
            self.bridge.calls.pop(self.call_id, None)
            self.bridge.session_closed.set()

    def _kafka_violation(self, exc: BaseException) -> Violation:
        return Violation(grpc.StatusCode.UNAVAILABLE, "kafka", f"Kafka did not accept the call's records: {exc!r}")

    async def _refuse(self, v: Violation) -> None:
        """Publish what was received (reason "error"), then send Error and end with v.code."""
        if v.kind not in ("kafka", "shutdown"):  # Kafka errors are counted where they happen
            metrics.ERRORS.labels(v.kind).inc()
        if self.call_id is not None and self._finish_task is None:
            reason = "shutdown" if v.kind == "shutdown" else "error"
            with contextlib.suppress(Exception):
                await self._finish_and_wait(reason)
        log.warning(
            "call refused",
            extra={**self._log_extra, "code": v.code.name, "kind": v.kind, "error": v.message},
        )
        await self._write(media_bridge_pb2.ServerMessage(error=media_bridge_pb2.Error(code=v.code.name, message=v.message)))
        if self._reader is not None:
            self._reader.cancel()
        await self.context.abort(v.code, v.message)

    async def _write(self, msg: media_bridge_pb2.ServerMessage) -> None:
        if self.client_gone:
            return
        async with self._write_lock:
            try:
                await self.context.write(msg)
            except Exception:
                self.client_gone = True


class MediaBridgeServicer(media_bridge_pb2_grpc.MediaBridgeServicer):
    def __init__(self, bridge: "Bridge") -> None:
        self.bridge = bridge

    async def StreamCall(self, request_iterator, context):  # noqa: N802 (gRPC name)
        await CallSession(self.bridge, request_iterator, context).run()


def add_media_bridge_to_server(servicer: MediaBridgeServicer, server: grpc.aio.Server) -> None:
    """Register StreamCall like the generated ``add_MediaBridgeServicer_to_server``, but with
    :func:`parse_client_message` as the request deserializer: bytes that are not a ClientMessage
    reach the session as a Violation (INVALID_ARGUMENT, kind ``undecodable``) instead of an
    exception out of the request iterator."""
    handlers = {
        "StreamCall": grpc.stream_stream_rpc_method_handler(
            servicer.StreamCall,
            request_deserializer=parse_client_message,
            response_serializer=media_bridge_pb2.ServerMessage.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class Bridge:
    """The server process: gRPC server, health, Kafka producer, live calls, graceful drain."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        tokens = settings.tokens()
        self.tokens: tuple[str, ...] | None = None if (settings.allow_unauthenticated and not tokens) else tokens
        self.publisher = KafkaPublisher(settings)
        self.registry = CallRegistry(max_calls=settings.max_calls, recent_size=settings.recent_call_ids)
        self.health = health_aio.HealthServicer()
        self.sessions: set[CallSession] = set()
        self.calls: dict[str, CallSession] = {}
        self.background: set[asyncio.Task] = set()
        self.session_closed = asyncio.Event()
        self.draining = False
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self._probe: asyncio.Task | None = None

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # already logged by the task; retrieved here so asyncio does not warn

    async def start(self) -> int:
        """Check keys, connect to Kafka, listen; returns the bound gRPC port."""
        s = self.settings
        s.hmac_key_bytes, s.encryption_key_bytes  # fail at start-up, not on the first call
        await asyncio.to_thread(ensure_topics, s, (AUDIO_CHUNKS, CALL_LIFECYCLE))
        await self.publisher.start()
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 20000),
                ("grpc.keepalive_timeout_ms", 10000),
                # under a burst of new calls the event loop may take a while to pick each up;
                # gRPC's default (30 s) silently CANCELLs the ones still waiting
                ("grpc.server_max_unrequested_time_in_server", 300),
            ],
            # beyond the live-call limit (plus room for health checks) gRPC itself answers
            # RESOURCE_EXHAUSTED at once instead of queueing the call
            maximum_concurrent_rpcs=self.settings.max_calls + 64,
        )
        add_media_bridge_to_server(MediaBridgeServicer(self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        await self.server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._probe = asyncio.create_task(self._probe_kafka())
        log.info(
            "media bridge listening",
            extra={"stage": "bridge", "port": self.port, "chunk_ms": s.chunk_ms, "instance": s.instance_name},
        )
        return self.port

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _probe_kafka(self) -> None:
        """Health follows the producer's connection to Kafka."""
        serving = True
        while True:
            await asyncio.sleep(self.settings.health_probe_seconds)
            try:
                await asyncio.wait_for(self.publisher.probe(), self.settings.health_probe_seconds)
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception:
                ok = False
            if ok != serving:
                serving = ok
                log.warning("kafka %s", "reachable" if ok else "unreachable", extra={"stage": "bridge"})
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def shutdown(self) -> None:
        """Graceful stop: refuse new calls, drain live ones up to drain_seconds, end the rest."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"stage": "bridge", "live_calls": len(self.calls), "drain_seconds": self.settings.drain_seconds})
        await self.health.enter_graceful_shutdown()
        for session in list(self.sessions):  # streams that have not started a call are new calls
            if session.call_id is None:
                session.signal(_Shutdown())
        deadline = time.monotonic() + self.settings.drain_seconds
        while self.calls and time.monotonic() < deadline:
            self.session_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.session_closed.wait(), deadline - time.monotonic())
        if self.calls:
            log.warning("drain deadline passed; ending live calls", extra={"stage": "bridge", "live_calls": len(self.calls)})
        for session in list(self.sessions):
            session.signal(_Shutdown())
        # let the sessions publish their last records and answer their clients
        end = time.monotonic() + self.settings.kafka_request_timeout_ms / 1000 + 5
        while (self.sessions or self.background) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if self._probe is not None:
            self._probe.cancel()
        if self.server is not None:
            await self.server.stop(grace=1)
        await self.publisher.stop()
        log.info("stopped", extra={"stage": "bridge"})

    async def close(self) -> None:
        """Immediate stop (tests, failed start-up)."""
        if self._probe is not None:
            self._probe.cancel()
        if self.server is not None:
            await self.server.stop(grace=None)
        for task in list(self.background):
            task.cancel()
        await self.publisher.stop()


async def serve(settings: BridgeSettings) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the exit code."""
    import signal

    from lupita.metrics import serve_metrics

    bridge = Bridge(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.start()
    except BaseException:
        await bridge.close()
        raise
    serve_metrics(settings.metrics_port, settings.metrics_host)
    await stop.wait()
    log.info("signal received", extra={"stage": "bridge"})
    await bridge.shutdown()
    return 0
