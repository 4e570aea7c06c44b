"""One Twilio Media Stream (one websocket) carried into one bridge call.

Order of things: ``connected`` (optional) → ``start`` (checked: mu-law 8 kHz mono, known tracks,
a usable phone number in ``customParameters``) → the bridge call is opened → every later message
goes through the :class:`~telephony_gateway.reorder.Reorderer` (sequence numbers) and each media
frame through its track's :class:`~telephony_gateway.timeline.TrackTimeline` (position, gaps,
format check) before it is written to the bridge → ``stop`` (or the socket's end, a stall, a
shutdown) → CallEnd with the reason.

Tracks are legs: ``inbound`` is what Twilio receives from the phone (the person, ``LEG_PERSON``),
``outbound`` what Twilio plays to it (Lupita's voice, ``LEG_LUPITA``). Both tracks' timestamps
count from the stream's start, so both legs land on one clock.

Identity: the bridge call id is ``customParameters.lupitaCallId`` when the TwiML set one, else
``twilio-<CallSid>``, so the vendor's call id is part of ours and every log line of the call names
both. The caller's number and consent come from ``customParameters`` (``phone``, ``consent``,
``consentSource``, ``region``, ``language``, ``familyPlanId``, ``direction``): the number goes to
the bridge only (which hashes and encrypts it) and is never logged.

Backpressure: a frame is written to the bridge only once the bridge has granted a credit, and the
socket is not read meanwhile, so a slow bridge slows the reader (websockets' own receive queue is
bounded, then TCP pushes back). Nothing in here grows with the call's length except counters.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from websockets.exceptions import ConnectionClosed

from lupita.audio import mulaw_decode
from lupita.privacy import InvalidPhoneNumber, normalize_phone
from lupita.v1 import audio_pb2, media_bridge_pb2 as pb

from . import metrics as m
from . import twilio_messages as tw
from .bridge_client import BridgeCall
from .errors import BadInput, BridgeFailed
from .joiner import FrameJoiner
from .reorder import Reorderer
from .session import SessionBase, SessionReport
from .settings import GatewaySettings
from .timeline import TrackTimeline
from .wsutil import close_draining

log = logging.getLogger("telephony_gateway.twilio")

SOURCE = "twilio"
TRACK_LEGS = {"inbound": audio_pb2.LEG_PERSON, "outbound": audio_pb2.LEG_LUPITA}
LEG_NAMES = {audio_pb2.LEG_PERSON: "person", audio_pb2.LEG_LUPITA: "lupita"}
CONSENT_TRUE = ("true", "yes", "1")
DIRECTIONS = {"outbound": audio_pb2.DIRECTION_OUTBOUND, "inbound": audio_pb2.DIRECTION_INBOUND}
# Websocket close codes (RFC 6455).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR = 1000, 1001, 1003, 1008, 1009, 1011


class _End(Exception):
    """Ends the read loop with an outcome (and a close code/reason for the socket)."""

    def __init__(self, outcome: str, close_code: int = CLOSE_NORMAL, reason: str = "") -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.close_code = close_code
        self.reason = reason


def call_start_from(start: tw.Start, settings: GatewaySettings, started_at_us: int) -> pb.CallStart:
    """The bridge's CallStart for a checked Twilio start (raises BadInput for what is unusable)."""
    if start.encoding != tw.MULAW_ENCODING or start.sample_rate != tw.SAMPLE_RATE or start.channels != tw.CHANNELS:
        raise BadInput(
            "media_format",
            f"mediaFormat {start.encoding[:40]!r} {start.sample_rate} Hz {start.channels} channel(s): the gateway takes "
            f"{tw.MULAW_ENCODING} {tw.SAMPLE_RATE} Hz mono (Twilio's only format)",
            fatal=True,
        )
    unknown = [t for t in start.tracks if t not in tw.TRACKS]
    if unknown:
        raise BadInput("invalid_field", f"start.tracks holds {len(unknown)} unknown track name(s)", fatal=True)
    params = start.custom_parameters
    try:
        normalize_phone(params.get("phone", ""))
    except InvalidPhoneNumber as exc:  # the message names the rule, never the value
        raise BadInput("custom_parameters", f"customParameters.phone is not usable: {exc}", fatal=True) from None
    direction = DIRECTIONS.get(params.get("direction", "outbound").lower())
    if direction is None:
        raise BadInput("custom_parameters", "customParameters.direction must be 'outbound' or 'inbound'", fatal=True)
    consent = params.get("consent", "").strip().lower() in CONSENT_TRUE
    codec = audio_pb2.CODEC_PCM16 if settings.gateway_forward_codec == "pcm16" else audio_pb2.CODEC_MULAW
    return pb.CallStart(
        call_id=params.get("lupitaCallId") or f"twilio-{start.call_sid}",
        direction=direction,
        sample_rate_hz=tw.SAMPLE_RATE,
        codec=codec,
        recording_consent=consent,
        started_at_us=started_at_us,
        caller=pb.CallerMetadata(
            phone_number=params["phone"],
            region=params.get("region", ""),
            family_plan_id=params.get("familyPlanId", ""),
            language=params.get("language", "es-MX"),
            consent_source=params.get("consentSource", "") if consent else "",
        ),
    )


class TwilioSession(SessionBase):
    """Runs one websocket connection to its end; :meth:`run` never raises for the peer's or the
    bridge's faults (they become the outcome)."""

    source = SOURCE

    def __init__(self, ws, settings: GatewaySettings, channel: grpc.aio.Channel) -> None:
        super().__init__(log)
        self.ws = ws
        self.settings = settings
        self.channel = channel
        self._started_at_us = 0
        self._reorder: Reorderer | None = None
        self._tracks: dict[str, TrackTimeline] = {}
        self._joiners: dict[str, FrameJoiner] = {}
        self._stream_sid = ""
        self._shutdown = False
        self._bridge_lost = False
        self._end_ms = 0.0

    def extra(self, **kw) -> dict:
        return super().extra(stream_sid=self._stream_sid or None, **kw)

    # -- the connection -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The gateway is stopping and the drain deadline passed: end this call with "shutdown"."""
        self._shutdown = True
        asyncio.ensure_future(self.ws.close(CLOSE_GOING_AWAY, "gateway shutting down"))

    async def run(self) -> SessionReport:
        outcome, code, reason = "rejected", CLOSE_NORMAL, ""
        try:
            start = await self._await_start()
            await self._open_bridge(start)
            self.went_live()
            outcome = await self._stream()
        except _End as end:
            outcome, code, reason = end.outcome, end.close_code, end.reason
        except BridgeFailed as exc:
            outcome, code, reason = "bridge_error", CLOSE_ERROR, f"bridge {exc.code}"[:120]
            self.bridge_failed(exc)
        if self._bridge_lost and outcome != "bridge_error":
            outcome, code, reason = "bridge_error", CLOSE_ERROR, "bridge error"
        try:
            ended = await self.end_bridge(outcome, self._started_at_us + int(self._end_ms * 1000))
        except asyncio.CancelledError:
            if self.bridge is not None:
                await self.bridge.abort()
            raise
        if ended != outcome:  # the bridge did not close the call cleanly
            outcome, code, reason = ended, CLOSE_ERROR, "bridge error"
        self.finish(outcome)
        await self._close_socket(code, reason)
        return self.report

    async def _close_socket(self, code: int, reason: str) -> None:
        await close_draining(self.ws, code, reason)

    async def _recv(self, timeout: float) -> str | bytes:
        try:
            async with asyncio.timeout(timeout):  # no extra task per message, unlike wait_for
                raw = await self.ws.recv()
            self.report.messages += 1
            return raw
        except asyncio.TimeoutError:
            self.bad(BadInput("stalled", f"no message for {timeout:.0f} s", fatal=True))
            raise _End("stalled", CLOSE_POLICY, "stalled: no message within the idle timeout") from None
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CLOSE_TOO_BIG:
                self.bad(BadInput("oversize_message",
                                   f"a message over {self.settings.gateway_max_message_bytes} bytes", fatal=True))
                raise _End("oversize_message", CLOSE_TOO_BIG, "message too big") from None
            if self._shutdown:
                raise _End("shutdown", CLOSE_GOING_AWAY, "gateway shutting down") from None
            if self._bridge_lost:
                raise _End("bridge_error", CLOSE_ERROR, "bridge error") from None
            raise _End("disconnect") from None

    def _parse(self, raw: str | bytes) -> tw.Event | None:
        if isinstance(raw, bytes):
            self.bad(BadInput("binary_frame", f"binary frame of {len(raw)} bytes (Twilio sends JSON text)"))
            return None
        try:
            return tw.parse(raw)
        except BadInput as exc:
            self.bad(exc)
            return None

    async def _await_start(self) -> tw.Start:
        deadline = time.monotonic() + self.settings.gateway_start_timeout_seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.bad(BadInput("stalled", "no start message within the start timeout", fatal=True))
                raise _End("rejected", CLOSE_POLICY, "no start message")
            event = self._parse(await self._recv(left))
            if isinstance(event, tw.Start):
                return event
            if isinstance(event, tw.Connected):
                if event.protocol != "Call":
                    self.bad(BadInput("media_format", "connected.protocol is not 'Call'", fatal=True))
                    raise _End("media_format", CLOSE_UNSUPPORTED, "unsupported protocol")
            elif event is not None:
                self.bad(BadInput("before_start", f"{type(event).__name__.lower()} before the start message"))

    async def _open_bridge(self, start: tw.Start) -> None:
        self._stream_sid = start.stream_sid
        self.report.stream_sid = start.stream_sid
        self.report.call_sid = start.call_sid
        self._started_at_us = time.time_ns() // 1000
        try:
            call_start = call_start_from(start, self.settings, self._started_at_us)
        except BadInput as exc:
            self.bad(exc)
            if exc.kind == "media_format":
                raise _End("media_format", CLOSE_UNSUPPORTED, "unsupported media format") from None
            raise _End("rejected", CLOSE_POLICY, exc.kind) from None
        self.report.call_id = call_start.call_id
        for track in start.tracks:
            self._joiners[track] = FrameJoiner(self.settings.gateway_bridge_frame_ms)
            self._tracks[track] = TrackTimeline(
                started_at_us=self._started_at_us, sample_rate=tw.SAMPLE_RATE, bytes_per_sample=1,
                max_frame_ms=self.settings.gateway_max_frame_ms, check_frames=self.settings.gateway_format_check_frames,
                name=track,
            )
        self._reorder = Reorderer(self.settings.gateway_reorder_window,
                                  next_seq=None if start.sequence_number is None else start.sequence_number + 1)
        self.bridge = BridgeCall(self.channel, self.settings.bridge_token, call_start,
                                 close_timeout_s=self.settings.gateway_bridge_close_seconds)
        await self.bridge.open()  # BridgeFailed: refused
        log.info("call started", extra=self.extra(tracks=list(start.tracks), consent=call_start.recording_consent,
                                                   codec=self.settings.gateway_forward_codec))

    async def _stream(self) -> str:
        watcher = asyncio.create_task(self._watch_bridge())
        try:
            while True:
                raw = await self._recv(self.settings.gateway_idle_timeout_seconds)
                received = time.perf_counter()
                event = self._parse(raw)
                if event is None:
                    continue
                if isinstance(event, (tw.Start, tw.Connected)):
                    self.bad(BadInput("second_start", f"{type(event).__name__.lower()} after the start message"))
                    continue
                if event.stream_sid != self._stream_sid:
                    self.bad(BadInput("stream_sid", "a message of another streamSid on this socket"))
                    continue
                if event.sequence_number is None:
                    ready, dropped = [event], None
                else:
                    ready, dropped = self._reorder.push(event.sequence_number, event)
                if dropped is not None:
                    self.bad(BadInput(dropped, f"sequenceNumber {event.sequence_number} {dropped}"))
                for item in ready:
                    if await self._handle(item, received):
                        return "completed"
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            self._count_reorder()

    def _count_reorder(self) -> None:
        if self._reorder is None:
            return
        stats = self._reorder.stats
        m.REORDERED.labels(SOURCE).inc(stats.reordered)
        m.SKIPPED.labels(SOURCE).inc(stats.skipped)
        stats.reordered = stats.skipped = 0

    async def _watch_bridge(self) -> None:
        """A bridge lost while the socket is quiet still ends the call at once, with its reason."""
        await self.bridge.wait_finished()
        if not self.bridge.ending:
            self._bridge_lost = True
            await self.ws.close(CLOSE_ERROR, "bridge error")

    async def _handle(self, event: tw.Event, received: float) -> bool:
        """Forward one in-order event; True on stop."""
        if isinstance(event, tw.Media):
            await self._media(event, received)
        elif isinstance(event, tw.Stop):
            for item in self._reorder.flush():
                await self._handle(item, received)
            return True
        elif isinstance(event, tw.Dtmf):
            m.EVENTS.labels(SOURCE, "dtmf").inc()
        elif isinstance(event, tw.Mark):
            m.EVENTS.labels(SOURCE, "mark").inc()
        return False

    async def _media(self, media: tw.Media, received: float) -> None:
        timeline = self._tracks.get(media.track)
        if timeline is None:
            self.bad(BadInput("invalid_field", f"media of track {media.track!r}, not announced in start.tracks"))
            return
        gaps_before = timeline.stats.gaps
        try:
            placed = timeline.place(media.chunk, media.timestamp_ms, len(media.payload))
        except BadInput as exc:
            self.bad(exc)
            if exc.fatal:
                raise _End("media_format", CLOSE_UNSUPPORTED, "audio does not match the announced format") from None
            return
        leg = TRACK_LEGS[media.track]
        leg_name = LEG_NAMES[leg]
        after_gap = timeline.stats.gaps > gaps_before
        if after_gap:
            m.GAPS.labels(SOURCE, leg_name).inc()
            m.GAP_SECONDS.labels(SOURCE, leg_name).inc(placed.gap_ms / 1000.0)
            self.report.gaps[leg_name] = self.report.gaps.get(leg_name, 0) + 1
        payload = media.payload
        if self.bridge.start.codec == audio_pb2.CODEC_PCM16:
            payload = mulaw_decode(payload).astype("<i2", copy=False).tobytes()
        dur_ms = timeline.duration_ms(len(media.payload))
        for joined in self._joiners[media.track].add(placed.capture_ts_us, payload, dur_ms, after_gap=after_gap):
            await self._send(leg, joined.seq, joined.capture_ts_us, joined.payload)
        m.FRAMES.labels(SOURCE, leg_name).inc()
        m.FORWARD_SECONDS.labels(SOURCE).observe(time.perf_counter() - received)
        self.report.frames[leg_name] = self.report.frames.get(leg_name, 0) + 1
        self._end_ms = max(self._end_ms, media.timestamp_ms + dur_ms)

    async def _send(self, leg: int, seq: int, capture_ts_us: int, payload: bytes) -> None:
        await self.bridge.send(pb.AudioFrame(leg=leg, seq=seq, capture_ts_us=capture_ts_us, payload=payload))

    async def before_end(self) -> None:
        """What the joiners still hold goes to the bridge before CallEnd (the end of the stream)."""
        for track, joiner in self._joiners.items():
            for joined in joiner.flush():
                await self._send(TRACK_LEGS[track], joined.seq, joined.capture_ts_us, joined.payload)
