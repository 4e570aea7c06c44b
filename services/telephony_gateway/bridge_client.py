"""One call streamed into the media bridge as its frames arrive (grpc.aio).

The call simulator's client (:mod:`loadgen.client`) sends a call whose frames are all known in
advance; a gateway learns them one by one from a vendor's socket. The wire half is the same and
is reused from there: the channel (``make_channel``), the shared credit/ack state (``_Flow``) and
the reader of the bridge's replies (``_read``: acks matched to frames, credits, Error, CallClosed,
final status). What this adds is the incremental sender: :meth:`BridgeCall.send` waits for a
credit before writing, which is the gateway's backpressure (a slow bridge grants credits slowly,
so the vendor's socket is read slowly), and a bridge that refuses or drops the call surfaces as
:class:`~telephony_gateway.errors.BridgeFailed` with the bridge's own code and message.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import grpc

from loadgen.client import CallResult, _Flow, _read, make_channel  # noqa: F401 (make_channel re-exported)
from lupita.v1 import media_bridge_pb2 as pb, media_bridge_pb2_grpc as pb_grpc

from .errors import BridgeFailed

# Per-frame ack latencies kept per call (the newest; a long call must not grow without bound).
LATENCY_SAMPLES = 2000


class BridgeCall:
    """``open()`` (CallStart, wait for CallAccepted), ``send()`` frames, ``end()`` or ``abort()``."""

    def __init__(self, channel: grpc.aio.Channel, token: str, start: pb.CallStart, *, close_timeout_s: float = 30.0) -> None:
        self.start = start
        self.close_timeout_s = close_timeout_s
        self.result = CallResult(call_id=start.call_id, frames_total=0)
        self.result.latencies_s = deque(maxlen=LATENCY_SAMPLES)  # _read only appends
        self._flow = _Flow()
        self._stub = pb_grpc.MediaBridgeStub(channel)
        self._token = token
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task | None = None
        self._ended = False

    @property
    def ending(self) -> bool:
        """end() or abort() was called: the stream's end is ours, not the bridge's."""
        return self._ended

    @property
    def finished(self) -> bool:
        """The bridge's stream is over (closed normally, refused, or lost)."""
        return self._flow.finished

    async def wait_finished(self) -> None:
        """Returns once the bridge's stream is over (for a watcher that must notice a lost bridge
        while the vendor's socket is quiet)."""
        if self._reader is not None:
            await asyncio.shield(self._reader)

    async def open(self) -> None:
        """Send CallStart; returns once the bridge accepted the call, else BridgeFailed."""
        self._call = self._stub.StreamCall(metadata=(("authorization", f"Bearer {self._token}"),))
        self._reader = asyncio.create_task(_read(self._call, self._flow, self.result))
        try:
            await self._call.write(pb.ClientMessage(start=self.start))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the reader records the status
        await self._flow.accepted.wait()
        if not self.result.accepted:
            await self._reader
            raise self.failure()

    async def send(self, frame: pb.AudioFrame) -> None:
        """Write one frame once a credit is free (waits: backpressure); BridgeFailed when the
        bridge's stream is over."""
        flow = self._flow
        while flow.credits <= 0 and not flow.finished:
            self.result.credit_waits += 1
            flow.changed.clear()
            await flow.changed.wait()
        if flow.finished:
            await self._reader
            raise self.failure()
        flow.credits -= 1
        flow.pending.setdefault(frame.leg, deque()).append((frame.seq, time.perf_counter()))
        self.result.frames_total += 1
        try:
            await self._call.write(pb.ClientMessage(frame=frame))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._reader
            raise self.failure() from None
        self.result.frames_sent += 1

    async def end(self, reason: str, ended_at_us: int) -> CallResult:
        """CallEnd + half-close; waits (bounded) for the final acks and CallClosed. BridgeFailed
        when the bridge did not close the call cleanly."""
        if self._ended:
            return self.result
        self._ended = True
        if not self._flow.finished:
            try:
                await self._call.write(pb.ClientMessage(end=pb.CallEnd(reason=reason, ended_at_us=ended_at_us)))
                await self._call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), self.close_timeout_s)
        except asyncio.TimeoutError:
            self._call.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            raise BridgeFailed("DEADLINE_EXCEEDED", f"no CallClosed within {self.close_timeout_s:.0f} s of CallEnd") from None
        if not self.result.ok:
            raise self.failure()
        return self.result

    async def abort(self) -> None:
        """Cancel the stream (the bridge ends the call with reason "disconnect")."""
        self._ended = True
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def failure(self) -> BridgeFailed:
        if self.result.errors:
            code, message = self.result.errors[-1]
            return BridgeFailed(code, message)
        if self.result.status not in ("OK", "UNKNOWN"):
            return BridgeFailed(self.result.status, self.result.details or "the bridge ended the stream")
        return BridgeFailed("UNAVAILABLE", self.result.details or "the bridge's stream ended before CallClosed")
