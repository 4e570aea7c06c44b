"""One simulated call over the media bridge's bidirectional gRPC stream (grpc.aio).

The client plays a telephony adapter: CallStart, then the frames of both legs interleaved in
capture-time order (per-leg ``seq``, ``capture_ts_us = started_at_us + offset``), never more
frames in flight than the bridge's flow-control credits allow, then CallEnd and a half-close.
A reader task matches the bridge's cumulative acks to the frames they cover and records the
ack latency of each frame (send time -> first ack that covers it).

``disconnect_after_frames`` cancels the RPC after that many frames, as a dropped telephony
connection would (for tests of the bridge's ``ended(reason=disconnect)``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import grpc
import numpy as np

from lupita.v1 import audio_pb2, media_bridge_pb2 as pb, media_bridge_pb2_grpc as pb_grpc

from .frames import Frame, slice_frames

log = logging.getLogger(__name__)

# Beyond the audio itself, how long a call may take (connect, drain, final acks).
DEFAULT_GRACE_S = 60.0


@dataclass
class CallResult:
    """What happened to one simulated call. Never holds the phone number."""

    call_id: str
    frames_total: int
    frames_sent: int = 0
    frames_acked: int = 0
    acks: int = 0  # Ack messages received
    credits_granted: int = 0  # initial + FlowControl
    credit_waits: int = 0  # times the sender had to wait for credits
    accepted: bool = False
    chunk_ms: int = 0  # from CallAccepted
    status: str = "UNKNOWN"  # final gRPC status code name
    details: str = ""
    errors: list[tuple[str, str]] = field(default_factory=list)  # Error messages (code, message)
    closed: dict[str, int] | None = None  # CallClosed counts
    disconnected: bool = False  # the client cancelled the RPC on purpose
    latencies_s: list[float] = field(default_factory=list)  # ack latency per acked frame
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """The call completed: status OK, CallClosed received, every frame sent and acked."""
        return (
            self.status == "OK"
            and self.closed is not None
            and not self.errors
            and self.frames_sent == self.frames_total == self.frames_acked
        )

    def summary(self) -> dict:
        """JSON-friendly view without the per-frame latencies."""
        return {
            "call_id": self.call_id,
            "ok": self.ok,
            "status": self.status,
            "details": self.details,
            "frames_total": self.frames_total,
            "frames_sent": self.frames_sent,
            "frames_acked": self.frames_acked,
            "acks": self.acks,
            "credit_waits": self.credit_waits,
            "chunk_ms": self.chunk_ms,
            "errors": [{"code": c, "message": m} for c, m in self.errors],
            "closed": self.closed,
            "disconnected": self.disconnected,
            "duration_s": round(self.duration_s, 3),
        }


class _Flow:
    """Credits and stream state shared by the sender and the reader of one call."""

    def __init__(self) -> None:
        self.credits = 0
        self.accepted = asyncio.Event()
        self.changed = asyncio.Event()
        self.finished = False
        # per leg: (seq, send time) of frames sent and not yet acknowledged, in seq order
        self.pending: dict[int, deque[tuple[int, float]]] = {}

    def finish(self) -> None:
        self.finished = True
        self.accepted.set()
        self.changed.set()


def make_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel with its own TCP connection (no subchannel sharing between channels)."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ],
    )


async def stream_call(
    target: str | grpc.aio.Channel,
    token: str,
    call_id: str,
    legs: np.ndarray | None,
    sample_rate: int,
    codec: int,
    *,
    frame_ms: int = 20,
    speed: float = 1.0,
    consent: bool = True,
    phone: str = "+529510000001",
    region: str = "oaxaca",
    language: str = "es-MX",
    family_plan_id: str = "",
    consent_source: str = "ivr_prompt_v2",
    direction: int = audio_pb2.DIRECTION_OUTBOUND,
    frames: Sequence[Frame] | None = None,
    started_at_us: int | None = None,
    end_reason: str = "completed",
    disconnect_after_frames: int | None = None,
    timeout_s: float | None = None,
) -> CallResult:
    """Stream one call and return its :class:`CallResult` (never raises for gRPC failures).

    ``legs`` is the stereo int16 audio (left = Lupita, right = person); pass pre-sliced
    ``frames`` instead to share the slicing between many calls. ``speed`` 1.0 = real time,
    2.0 = twice as fast, 0 = as fast as the credits allow.
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    if frames is None:
        if legs is None:
            raise ValueError("pass legs (stereo audio) or frames")
        frames = slice_frames(legs, sample_rate, codec, frame_ms)
    result = CallResult(call_id=call_id, frames_total=len(frames))
    audio_s = (frames[-1].offset_us / 1e6 + frame_ms / 1000) if frames else 0.0
    if timeout_s is None:
        timeout_s = (audio_s / speed if speed else 0.0) + DEFAULT_GRACE_S
    started_at_us = time.time_ns() // 1000 if started_at_us is None else started_at_us

    own_channel = make_channel(target) if isinstance(target, str) else None
    channel = own_channel or target
    stub = pb_grpc.MediaBridgeStub(channel)
    flow = _Flow()
    t_begin = time.perf_counter()
    call = stub.StreamCall(metadata=(("authorization", f"Bearer {token}"),), timeout=timeout_s)
    reader = asyncio.create_task(_read(call, flow, result))
    try:
        start = pb.CallStart(
            call_id=call_id,
            direction=direction,
            sample_rate_hz=sample_rate,
            codec=codec,
            recording_consent=consent,
            started_at_us=started_at_us,
            caller=pb.CallerMetadata(
                phone_number=phone,
                region=region,
                family_plan_id=family_plan_id,
                language=language,
                consent_source=consent_source if consent else "",
            ),
        )
        await call.write(pb.ClientMessage(start=start))
        await flow.accepted.wait()
        if not flow.finished:
            await _send_frames(call, flow, result, frames, started_at_us, speed, disconnect_after_frames)
        if not flow.finished and not result.disconnected:
            end = pb.CallEnd(reason=end_reason, ended_at_us=started_at_us + int(audio_s * 1e6))
            await call.write(pb.ClientMessage(end=end))
            await call.done_writing()
        await reader
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await reader  # the stream ended under us; the reader records the status
    except BaseException:  # cancelled from outside, or a bug: do not leave the RPC open
        call.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        raise
    finally:
        result.duration_s = time.perf_counter() - t_begin
        if own_channel is not None:
            await own_channel.close()
    log.debug(
        "call finished",
        extra={"call_id": call_id, "stage": "loadgen", "status": result.status, "ok": result.ok},
    )
    return result


async def _send_frames(
    call: grpc.aio.StreamStreamCall,
    flow: _Flow,
    result: CallResult,
    frames: Sequence[Frame],
    started_at_us: int,
    speed: float,
    disconnect_after: int | None,
) -> None:
    t0 = time.perf_counter()
    loop_sleep = asyncio.sleep
    for frame in frames:
        if speed > 0:
            delay = t0 + frame.offset_us / 1e6 / speed - time.perf_counter()
            if delay > 0.001:
                await loop_sleep(delay)
        while flow.credits <= 0 and not flow.finished:
            result.credit_waits += 1
            flow.changed.clear()
            await flow.changed.wait()
        if flow.finished:
            return
        msg = pb.ClientMessage(
            frame=pb.AudioFrame(
                leg=frame.leg, seq=frame.seq, capture_ts_us=started_at_us + frame.offset_us, payload=frame.payload
            )
        )
        flow.credits -= 1
        flow.pending.setdefault(frame.leg, deque()).append((frame.seq, time.perf_counter()))
        await call.write(msg)
        result.frames_sent += 1
        if disconnect_after is not None and result.frames_sent >= disconnect_after:
            result.disconnected = True
            call.cancel()
            return


async def _read(call: grpc.aio.StreamStreamCall, flow: _Flow, result: CallResult) -> None:
    try:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                break
            kind = msg.WhichOneof("msg")
            if kind == "ack":
                now = time.perf_counter()
                result.acks += 1
                pending = flow.pending.get(msg.ack.leg)
                while pending and pending[0][0] <= msg.ack.seq:
                    _, sent_at = pending.popleft()
                    result.latencies_s.append(now - sent_at)
                    result.frames_acked += 1
            elif kind == "flow":
                flow.credits += msg.flow.credits
                result.credits_granted += msg.flow.credits
                flow.changed.set()
            elif kind == "accepted":
                result.accepted = True
                result.chunk_ms = msg.accepted.chunk_ms
                flow.credits += msg.accepted.credits
                result.credits_granted += msg.accepted.credits
                flow.accepted.set()
                flow.changed.set()
            elif kind == "error":
                result.errors.append((msg.error.code, msg.error.message))
            elif kind == "closed":
                c = msg.closed
                result.closed = {
                    "frames_lupita": c.frames_lupita,
                    "frames_person": c.frames_person,
                    "chunks_lupita": c.chunks_lupita,
                    "chunks_person": c.chunks_person,
                }
    except grpc.aio.AioRpcError:
        pass
    except asyncio.CancelledError:
        if not result.disconnected:  # our own task was cancelled, not the RPC on purpose
            flow.finish()
            raise
    finally:
        flow.finish()
    code = await call.code()
    result.status = code.name
    result.details = (await call.details()) or ""
