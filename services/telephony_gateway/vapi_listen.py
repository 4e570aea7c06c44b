"""VAPI live audio: the gateway connects to a call's ``call.monitor.listenUrl`` and streams what
it hears into one bridge call.

The listen socket (docs.vapi.ai, "Call Listen" / "Live Call Control") carries **binary frames of
raw PCM s16le** and **text frames of JSON**. The audio is stereo, 16-bit, interleaved, channel 0
the customer and channel 1 the assistant, at 16 kHz by current accounts (VAPI's custom-transcriber
contract announces the same format in a ``{"type": "start", "encoding": "linear16", "container":
"raw", "sampleRate": 16000, "channels": 2}`` text frame). So the format is taken from, in order: a
``start`` text frame if the socket sends one, else the call's metadata (:class:`VapiCall`), else
16 kHz stereo; and it is checked against the stream itself: binary frames must hold whole stereo
samples, and the audio must not arrive faster than real time (``gateway_vapi_rate_check_seconds``
after the first frame: more audio than wall time means the rate is higher than announced). With
``monitorPlan.listenAuthenticationEnabled`` the socket wants ``Authorization: Bearer <public API
key>`` (:attr:`VapiCall.listen_token`).

Legs: customer (channel 0) = ``LEG_PERSON``, assistant (channel 1) = ``LEG_LUPITA``. Both legs come
interleaved in one stream, so one clock holds by construction: a frame's ``capture_ts_us`` is the
call start plus the samples received before it. The bridge call id is ``vapi-<VAPI call id>``.
The call ends on the socket's close (``completed`` when VAPI closes it normally, ``disconnect``
otherwise), on an ``end-of-call-report`` text frame, a stall, or a gateway shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

from lupita.privacy import InvalidPhoneNumber, normalize_phone
from lupita.v1 import audio_pb2, media_bridge_pb2 as pb

from . import metrics as m
from .bridge_client import BridgeCall
from .errors import BadInput, BridgeFailed
from .settings import GatewaySettings
from .session import SessionBase, SessionReport
from .wsutil import close_draining

log = logging.getLogger("telephony_gateway.vapi")

SOURCE = "vapi"
FRAME_MS = 20
CHANNEL_LEGS = (audio_pb2.LEG_PERSON, audio_pb2.LEG_LUPITA)  # channel 0 customer, channel 1 assistant
LEG_NAMES = {audio_pb2.LEG_PERSON: "person", audio_pb2.LEG_LUPITA: "lupita"}
PCM_ENCODINGS = ("linear16", "pcm_s16le")
END_TYPES = ("end-of-call-report",)


@dataclass(frozen=True)
class VapiCall:
    """What the gateway needs to listen to one VAPI call (from the call object / webhook)."""

    vapi_call_id: str
    listen_url: str
    phone: str = field(repr=False)  # customer.number: to the bridge only, never logged
    consent: bool = False
    consent_source: str = ""
    region: str = ""
    language: str = "es-MX"
    family_plan_id: str = ""
    direction: int = audio_pb2.DIRECTION_OUTBOUND
    listen_token: str = field(default="", repr=False)
    sample_rate: int = 16000
    channels: int = 2


class _End(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class VapiSession(SessionBase):
    """Listens to one call until it ends; :meth:`run` never raises for VAPI's or the bridge's faults."""

    source = SOURCE

    def __init__(self, call: VapiCall, settings: GatewaySettings, channel: grpc.aio.Channel) -> None:
        super().__init__(log)
        self.call = call
        self.settings = settings
        self.channel = channel
        self.report.call_id, self.report.call_sid = f"vapi-{call.vapi_call_id}", call.vapi_call_id
        self.ws = None
        self.rate = call.sample_rate
        self.channels = call.channels
        self._buf = bytearray()
        self._samples = 0  # per channel, forwarded so far
        self._seq = 0
        self._started_at_us = 0
        self._first_audio: float | None = None
        self._shutdown = False

    def shutdown(self) -> None:
        self._shutdown = True
        if self.ws is not None:
            asyncio.ensure_future(self.ws.close(1001, "gateway shutting down"))

    async def run(self) -> SessionReport:
        outcome = "rejected"
        try:
            try:
                normalize_phone(self.call.phone)
            except InvalidPhoneNumber as exc:
                raise BadInput("custom_parameters", f"the call's customer number is not usable: {exc}", fatal=True) from None
            headers = {"Authorization": f"Bearer {self.call.listen_token}"} if self.call.listen_token else {}
            async with connect(self.call.listen_url, additional_headers=headers,
                               max_size=self.settings.gateway_max_message_bytes, max_queue=16,
                               open_timeout=self.settings.gateway_start_timeout_seconds, compression=None) as ws:
                self.ws = ws
                try:
                    first = await self._first_message()
                    await self._open_bridge()
                    self.went_live()
                    outcome = await self._stream(first)
                finally:
                    await close_draining(ws)
        except _End as end:
            outcome = end.outcome
        except BadInput as exc:
            self.bad(exc)
            outcome = "media_format" if exc.kind == "media_format" else "rejected"
        except InvalidStatus as exc:
            self.log.error("listen socket refused", extra=self.extra(status=exc.response.status_code))
        except (OSError, asyncio.TimeoutError) as exc:
            self.log.error("listen socket unreachable", extra=self.extra(error=type(exc).__name__))
        except BridgeFailed as exc:
            outcome = "bridge_error"
            self.bridge_failed(exc)
        outcome = await self.end_bridge(outcome, self._started_at_us + self._samples * 1_000_000 // self.rate)
        self.finish(outcome)
        return self.report

    async def before_end(self) -> None:
        await self._flush_tail()

    async def _flush_tail(self) -> None:
        """The audio short of a whole bridge frame at the end is sent as a shorter frame (a
        fraction of a stereo sample, if any, cannot be placed and is dropped)."""
        width = 2 * self.channels
        whole = len(self._buf) // width * width
        if whole:
            await self._send_block(bytes(self._buf[:whole]))
        self._buf.clear()

    # -- reading ----------------------------------------------------------------------------------

    async def _recv(self, timeout: float):
        try:
            async with asyncio.timeout(timeout):  # no extra task per message, unlike wait_for
                raw = await self.ws.recv()
            self.report.messages += 1
            return raw
        except asyncio.TimeoutError:
            self.bad(BadInput("stalled", f"no message for {timeout:.0f} s", fatal=True))
            raise _End("stalled") from None
        except ConnectionClosedOK:
            raise _End("shutdown" if self._shutdown else "completed") from None
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                self.bad(BadInput("oversize_message", f"a message over {self.settings.gateway_max_message_bytes} bytes",
                                   fatal=True))
                raise _End("oversize_message") from None
            raise _End("shutdown" if self._shutdown else "disconnect") from None

    async def _first_message(self):
        """The first message: a ``start`` text frame fixes the format; anything else is kept."""
        raw = await self._recv(self.settings.gateway_start_timeout_seconds)
        if isinstance(raw, str):
            msg = self._json(raw)
            if isinstance(msg, dict) and msg.get("type") == "start":
                self._apply_start(msg)
                return None
        return raw

    def _apply_start(self, msg: dict) -> None:
        encoding, rate, channels = msg.get("encoding"), msg.get("sampleRate"), msg.get("channels")
        if encoding not in PCM_ENCODINGS or rate not in (8000, 16000) or channels not in (1, 2):
            raise BadInput("media_format", f"start announces {str(encoding)[:20]!r} at {str(rate)[:8]} Hz, "
                           f"{str(channels)[:4]} channel(s): the gateway takes 16-bit PCM at 8 or 16 kHz, 1 or 2 channels",
                           fatal=True)
        self.rate, self.channels = rate, channels

    def _json(self, raw: str):
        try:
            return json.loads(raw)
        except ValueError:
            self.bad(BadInput("malformed_json", f"text frame of {len(raw)} characters is not JSON"))
            return None

    async def _open_bridge(self) -> None:
        self._started_at_us = time.time_ns() // 1000
        c = self.call
        start = pb.CallStart(
            call_id=self.report.call_id, direction=c.direction, sample_rate_hz=self.rate,
            codec=audio_pb2.CODEC_PCM16, recording_consent=c.consent, started_at_us=self._started_at_us,
            caller=pb.CallerMetadata(phone_number=c.phone, region=c.region, family_plan_id=c.family_plan_id,
                                     language=c.language, consent_source=c.consent_source if c.consent else ""),
        )
        self.bridge = BridgeCall(self.channel, self.settings.bridge_token, start,
                                 close_timeout_s=self.settings.gateway_bridge_close_seconds)
        await self.bridge.open()
        log.info("call started", extra=self.extra(sample_rate=self.rate, channels=self.channels, consent=c.consent))

    async def _stream(self, first) -> str:
        raw = first
        while True:
            if raw is not None:
                received = time.perf_counter()
                if isinstance(raw, bytes):
                    await self._audio(raw, received)
                else:
                    msg = self._json(raw)
                    if isinstance(msg, dict):
                        kind = str(msg.get("type", ""))[:40] or "untyped"
                        if kind == "start":
                            self.bad(BadInput("second_start", "a start text frame after the audio began"))
                        else:
                            m.EVENTS.labels(SOURCE, kind).inc()
                        if kind in END_TYPES:
                            return "completed"
                    elif msg is not None:
                        self.bad(BadInput("malformed_json", f"text frame is a JSON {type(msg).__name__}, not an object"))
            if self.bridge.finished and not self.bridge.ending:
                raise self.bridge.failure()
            raw = await self._recv(self.settings.gateway_idle_timeout_seconds)

    async def _send_block(self, block_bytes: bytes) -> None:
        """One bridge frame per leg from interleaved stereo (or mono) samples."""
        block = np.frombuffer(block_bytes, dtype="<i2").reshape(-1, self.channels)
        self._seq += 1
        ts = self._started_at_us + self._samples * 1_000_000 // self.rate
        for ch in range(self.channels):
            leg = CHANNEL_LEGS[ch]
            await self.bridge.send(pb.AudioFrame(leg=leg, seq=self._seq, capture_ts_us=ts,
                                                 payload=np.ascontiguousarray(block[:, ch]).astype("<i2").tobytes()))
            m.FRAMES.labels(SOURCE, LEG_NAMES[leg]).inc()
            self.report.frames[LEG_NAMES[leg]] = self.report.frames.get(LEG_NAMES[leg], 0) + 1
        self._samples += block.shape[0]

    async def _audio(self, data: bytes, received: float) -> None:
        width = 2 * self.channels
        if self._first_audio is None:
            self._first_audio = time.monotonic()
        self._buf += data
        frame_bytes = self.rate * self.settings.gateway_bridge_frame_ms // 1000 * width
        check_s = self.settings.gateway_vapi_rate_check_seconds
        while len(self._buf) >= frame_bytes:
            block = bytes(self._buf[:frame_bytes])
            del self._buf[:frame_bytes]
            await self._send_block(block)
            m.FORWARD_SECONDS.labels(SOURCE).observe(time.perf_counter() - received)
        if check_s and self._first_audio is not None:
            wall = time.monotonic() - self._first_audio
            audio = self._samples / self.rate
            if wall >= check_s and audio > 1.5 * wall + 0.5:
                raise BadInput("media_format", f"{audio:.1f} s of audio at {self.rate} Hz arrived in {wall:.1f} s: the "
                               "stream's rate is higher than announced", fatal=True)
